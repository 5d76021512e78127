"""The typed description of one BIB run: task, LM, device and engine hyperparameters.

A run file (``bib-ray run --config FILE``) and the best config a search writes are this object as
YAML. Everything above it (search spaces, ablation plans) produces RunSpecs; everything below it
(workbench, engine) consumes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bib_ray.core.config import EngineConfig
from bib_ray.criteria import CriteriaConfig
from bib_ray.errors import BibInputError
from bib_ray.proxy.small_lm import SmallLMConfig


class TaskSpec(BaseModel):
    """A task by name with its options (``aav`` takes start/end/phenotype, ``csv`` a path, ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "tfbind8"
    options: dict[str, Any] = Field(default_factory=dict)

    def key(self) -> str:
        """A stable text key for caches."""
        return self.name + "?" + "&".join(f"{k}={self.options[k]}" for k in sorted(self.options))


class RunSpec(BaseModel):
    """Everything one BIB run needs, validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: TaskSpec = Field(default_factory=TaskSpec)
    lm: str | None = Field(None, description="hub id or local path of a masked LM, or antiberty (the packaged "
                           "antibody LM); None: the default small LM")
    lm_pretrain: SmallLMConfig = Field(default_factory=SmallLMConfig, description="the default LM's recipe")
    device: str = Field("cpu", description="cpu, cuda, cuda:N or auto")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="the LM's number format during design: bf16 halves its weights and activations "
                            "(losses, ridge solves and offline embeddings stay fp32)")
    engine: EngineConfig = Field(default_factory=EngineConfig)
    criteria: CriteriaConfig = Field(default_factory=CriteriaConfig,
                                     description="how the offline-safe criteria are fit (bib_ray.criteria)")

    @field_validator("task", mode="before")
    @classmethod
    def _task_from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    def with_updates(self, updates: dict[str, Any]) -> "RunSpec":
        """A copy with dotted-path updates applied (``engine.lr``, ``lm_pretrain.steps``, ``task.options.start``)."""
        data = self.model_dump()
        for dotted, value in updates.items():
            node = data
            parts = dotted.split(".")
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    raise BibInputError(dotted, "is not a run setting", "use engine.<key>, lm_pretrain.<key>, "
                                        "task.name, task.options.<key>, lm or device")
                node = node[part]
            node[parts[-1]] = value
        return parse_run_spec(data, "config")


def describe_validation_error(err: ValidationError, source: str) -> BibInputError:
    """The first pydantic error as one line that names the key and the fix."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        return BibInputError(f"{source}: {key}", "unknown key", "remove it or check its spelling")
    if kind == "missing":
        return BibInputError(f"{source}: {key}", "is required", "add it")
    message = first["msg"].removeprefix("Value error, ")
    return BibInputError(f"{source}: {key}", f"{message} (got {first.get('input')!r})", "fix the value")


ModelT = TypeVar("ModelT", bound=BaseModel)


def validate_mapping(model: type[ModelT], data: Any, source: str, example: str) -> ModelT:
    """Validate a YAML mapping into ``model``; every failure is one input error naming the key.

    Shared by run files, search spaces and ablation plans, so all three report mistakes alike.
    """
    if not isinstance(data, dict):
        raise BibInputError(source, "must be a YAML mapping", f"see {example} for the keys")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise describe_validation_error(err, source) from None


def parse_run_spec(data: Any, source: str) -> RunSpec:
    """Validate a mapping into a RunSpec (an empty file means all defaults)."""
    return validate_mapping(RunSpec, {} if data is None else data, source, "README.md")


def load_yaml(path: str | Path, field: str = "config") -> Any:
    """Read a YAML file, with a one-line error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise BibInputError(field, f"file {str(path)!r} does not exist", "give the path of an existing YAML file")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise BibInputError(field, f"{path} is not valid YAML{where}", "fix the YAML syntax") from None


def load_run_spec(path: str | Path) -> RunSpec:
    """A run file: RunSpec keys at the top level (``engine:`` holds the hyperparameters)."""
    return parse_run_spec(load_yaml(path), str(path))


def dump_run_spec(spec: RunSpec, path: str | Path) -> None:
    """Write a RunSpec as YAML that :func:`load_run_spec` reads back."""
    Path(path).write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
