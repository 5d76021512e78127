"""Typed, validated hyperparameters of the BIB engine, with the paper's defaults.

Configuration is data: a YAML mapping validated into :class:`EngineConfig`. Unknown keys and bad
values are rejected with the key named, so a typo never silently falls back to a default.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Variant = Literal["forward", "backward", "fixed", "learned", "grad"]
VARIANTS: tuple[str, ...] = ("forward", "backward", "fixed", "learned", "grad")
Relaxation = Literal["straight_through", "softmax"]


class EngineConfig(BaseModel):
    """Hyperparameters of one BIB design run (defaults: the authors' code, see BIB_NOTES)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    variant: Variant = Field("learned", description="forward | backward | fixed | learned | grad")
    adaptive_eta: bool = Field(False, description="learn the design learning rate per step (Adaptive-eta)")
    steps: int | None = Field(None, ge=1, le=100_000, description="design steps; None = task default")
    designs: int = Field(128, ge=1, le=100_000, description="M, designs optimised in one batch")
    seed: int = Field(0, ge=0, description="seed of the start noise and auxiliary heads")
    lr: float = Field(0.1, gt=0, le=10.0, description="design Adam learning rate (eta_0 without Adaptive-eta)")
    target: float = Field(10.0, description="y_h, the design label in z units of the offline scores")
    beta_scale: float = Field(1.0, gt=0, description="ridge = beta_scale * 1e-6 * trace(K) / size")
    gamma: float = Field(0.5, ge=0.0, le=1.0, description="forward weight (fixed) or its start (learned)")
    gamma_lr: float = Field(0.1, gt=0, le=10.0, description="Adam learning rate of Adaptive-gamma")
    eta_base: float = Field(0.1, gt=0, description="eta_0 of Adaptive-eta")
    eta_scale: float = Field(0.01, ge=0, description="c of Adaptive-eta: eta = eta_0 - c <grad f_a, d>")
    eta_min: float = Field(1e-4, gt=0, description="lower clamp of the learned learning rate")
    eta_max: float = Field(0.5, gt=0, description="upper clamp of the learned learning rate")
    init_noise: float = Field(0.01, ge=0, description="std of the start logits' noise")
    relaxation: Relaxation = Field("straight_through", description="straight_through (authors) | softmax")
    aux_heads: int = Field(5, ge=1, le=64, description="members of the auxiliary ensemble f_a")
    aux_hidden: int = Field(64, ge=0, le=4096, description="hidden units of each f_a head (0: linear ridge)")
    aux_epochs: int = Field(200, ge=1, le=100_000, description="full-batch Adam steps per f_a head")

    @model_validator(mode="after")
    def _check_eta_range(self) -> "EngineConfig":
        if self.eta_min > self.eta_max:
            raise ValueError("eta_min must not exceed eta_max")
        return self

    def steps_for(self, task_default: int) -> int:
        """The number of steps to run: the configured one, else the task's default."""
        return self.steps if self.steps is not None else task_default
