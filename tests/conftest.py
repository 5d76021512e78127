"""Shared fixtures: a tiny randomly initialised LM (never a download) and a toy task."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)

from bib_ray.proxy.lm_proxy import LMProxy  # noqa: E402
from bib_ray.proxy.small_lm import SmallLMConfig, build_small_bert  # noqa: E402
from bib_ray.tasks.base import Task  # noqa: E402
from observed import OBSERVED  # noqa: E402

TINY = SmallLMConfig(hidden=16, layers=1, heads=2, intermediate=32, steps=0)


class ToyTask(Task):
    """DNA-like toy: score = a fixed linear function of the one-hot sequence."""

    def __init__(self, n: int = 200, length: int = 6, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.name, self.alphabet, self.length, self.default_steps = "toy", "ACGT", length, 5
        self.weights = rng.normal(size=(length, 4))
        x = rng.integers(0, 4, size=(n, length))
        self.offline_x = x
        self.offline_y = self.oracle(x)
        self.y_min = float(self.weights.min(1).sum())
        self.y_max = float(self.weights.max(1).sum())

    def oracle(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        return self.weights[np.arange(x.shape[1]), x].sum(1)


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> str:
    """A tiny BERT over ACGT saved with save_pretrained, loadable by path."""
    model, tokenizer = build_small_bert("ACGT", TINY, 16)
    path = tmp_path_factory.mktemp("tiny_lm")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_proxy(tiny_lm_dir) -> LMProxy:
    return LMProxy.load(tiny_lm_dir, "ACGT", "cpu")


@pytest.fixture()
def toy_task() -> ToyTask:
    return ToyTask()


@pytest.fixture()
def lm_setting(tiny_proxy, toy_task):
    """The toy task through the tiny LM: (proxy, offline ridge fit, auxiliary model, the 6 best starts)."""
    from bib_ray.core.auxiliary import fit_auxiliary
    from bib_ray.core.ridge import OfflineFit

    x = torch.as_tensor(toy_task.offline_x)
    phi = tiny_proxy.embed_sequences(x)
    y = torch.as_tensor(toy_task.offline_y)
    y = (y - y.mean()) / y.std()
    fit = OfflineFit.fit(phi, y)
    aux = fit_auxiliary(phi, y, heads=2, hidden=8, epochs=20, seed=0)
    start = x[torch.argsort(y)[-6:]]
    return tiny_proxy, fit, aux, start


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own LM/embedding cache and MLflow store location."""
    monkeypatch.setenv("BIB_RAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def observed():
    """Where a test records what it saw (bad-input cases, crash recoveries, runs lost)."""
    return OBSERVED


def pytest_terminal_summary(terminalreporter) -> None:
    """Print the observed counts (only kinds some test recorded in this session)."""
    lines = OBSERVED.summary_lines()
    if lines:
        terminalreporter.section("observed by the tests")
        for line in lines:
            terminalreporter.write_line(line)
