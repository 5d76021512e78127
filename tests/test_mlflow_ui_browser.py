"""The address bib-ray prints opens the runs table, with every child run listed, in a real MLflow UI.

A real ``mlflow server`` on a loopback port serves a small SQLite store (a parent run and nested
children named like ablation cells); headless Chromium (the OS package) renders the address from
``runs_table_url`` and the test reads the rendered DOM. MLflow's UI is a JavaScript app whose routes
change between releases, so only a browser can tell whether the address still opens the table: the
GenAI overview, the GenAI navigation or the children folded under their parent all fail here.
Slow (a server start and a page render, about half a minute): scripts/run_slow_tests.sh runs it.
"""

from __future__ import annotations

import html
import importlib.util
import re
from pathlib import Path

import pytest

from bib_ray.tracking.metric_keys import mlflow_key
from bib_ray.tracking.store import Store
from bib_ray.tracking.ui_links import runs_table_url
from bib_ray.trial_records import HEADLINE_METRICS, SPREAD_METRICS

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "mlflow_screenshot.py"
CHILDREN = [f"tfbind8/{variant}/lm{lm}/seed{seed}" for variant in ("fixed", "learned") for lm in (0, 1)
            for seed in (0,)]
PARENT = "ui_check_plan"
# What a finished cell logs, in kind: step diagnostics that sort before the scores, the scores, their spread.
CELL_METRICS = ("aux_oracle_gap", "backward_loss", "eta", "forward_loss", "gamma", *HEADLINE_METRICS,
                *(f"{name}_std" for name in SPREAD_METRICS), "proxy_max", "proxy_median", "proxy_mean")
SECTION = re.compile(r"([^|]+?) \| \((\d+)\) \| Add chart")  # a chart section's header: name | (charts) | Add chart


def load_script():
    """scripts/mlflow_screenshot.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("mlflow_screenshot", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


screenshot = load_script()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(screenshot.find_chromium() is None,
                                 reason="needs Chromium from the OS packages: apt-get install chromium")]


def visible_text(page: str) -> str:
    """The page's text nodes joined by ' | ' (scripts and styles dropped)."""
    page = re.sub(r"<(script|style)\b[^>]*>.*?</\1>", "", page, flags=re.S)
    return " | ".join(html.unescape(part.strip()) for part in re.split(r"<[^>]+>", page) if part.strip())


def page_title(page: str) -> str:
    match = re.search(r"<title>(.*?)</title>", page, flags=re.S)
    return html.unescape(match.group(1)).strip() if match else ""


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory) -> tuple[str, str]:
    """A SQLite store with one parent run and its finished children; (tracking URI, experiment id)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('ui_store') / 'mlruns.db'}"
    store = Store(uri, PARENT)
    parent = store.create_run(PARENT, {"bib_ray.kind": "ablation"})
    for index, name in enumerate(CHILDREN):
        child = store.create_run(name, {"cell": name}, parent_id=parent)
        for step in (1, 2, 3):
            store.log_metrics(child, {metric: 0.5 + 0.1 * index + 0.01 * step for metric in CELL_METRICS}, step=step)
        store.set_status(child, "FINISHED")
    store.set_status(parent, "FINISHED")
    return uri, store.experiment_id, child


@pytest.fixture(scope="module")
def ui_address(store_uri, tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1 and a free port for the store, stopped by pid after the module."""
    with screenshot.serving_ui(store_uri[0], tmp_path_factory.mktemp("ui_server") / "server.log") as address:
        yield address


def rendered(url: str, tmp_path: Path, budget_ms: int = 20000) -> str:
    """The DOM headless Chromium renders at ``url`` (the browser is stopped by pid before this returns)."""
    dom = tmp_path / "page.html"
    screenshot.render(url, dom=dom, budget_ms=budget_ms)
    return dom.read_text(errors="replace")


def rendered_text_once(url: str, tmp_path: Path, ready: str, tries: int = 3) -> str:
    """The page's visible text once it holds ``ready``: a chart card draws after its metric history comes
    back from the server, which the browser's virtual time budget does not wait for, so a page dumped too
    early is rendered again with a longer budget (the last try's text is returned either way)."""
    text = ""
    for attempt in range(1, tries + 1):
        text = visible_text(rendered(url, tmp_path, budget_ms=20000 * attempt))
        if ready in text:
            break
    return text


def test_runs_table_url_lists_the_child_runs_in_the_model_training_view(store_uri, ui_address, tmp_path):
    uri, experiment_id, _ = store_uri
    url = runs_table_url(uri, experiment_id, ui_address=ui_address)
    assert url.startswith(ui_address + "/#/experiments/")
    page = rendered(url, tmp_path)
    text = visible_text(page)
    assert page_title(page).startswith(f"Runs - Experiment {experiment_id}"), page_title(page)
    assert "Observability" not in text, "the GenAI navigation, not the model-training one"
    missing = [name for name in CHILDREN if name not in text]
    assert not missing, f"child runs not listed at {url}: {missing}\n{text[:1500]}"
    assert PARENT in text


def test_a_runs_charts_open_on_the_normalized_scores_under_titles_that_differ(store_uri, ui_address, tmp_path):
    """MLflow's UI puts a name with a '/' in a chart section of its own, ahead of "Model metrics", and
    titles the chart by the part after the '/' (bib_ray.tracking.metric_keys says why bib-ray uses that)."""
    _, experiment_id, child = store_uri
    url = f"{ui_address}/#/experiments/{experiment_id}/runs/{child}/model-metrics"
    text = rendered_text_once(url, tmp_path, ready="(normalized/")
    sections = [(name.strip(), int(count)) for name, count in SECTION.findall(text)]
    plain = [m for m in CELL_METRICS if mlflow_key(m) == m]
    assert sections == [("normalized", 5), ("proxy", 3), ("Model metrics", len(plain))], f"{sections}\n{text[:2000]}"
    # The first section is open: its charts, in order, with the legend naming the full key.
    shown = re.findall(r"\((normalized/\w+)\)", text)
    assert shown == sorted(mlflow_key(m) for m in CELL_METRICS if m.startswith("normalized_")), shown
    titles = [key.split("/")[-1] for key in shown]
    assert len(set(titles)) == 5 and max(map(len, titles)) <= 10, titles  # short enough not to truncate
    first_chart = text.index(f"| {titles[0]} |")
    assert all(f"| {title} |" in text[first_chart:] for title in titles)
    assert text.index("Model metrics | (") > first_chart, "the scores lead the page"


# Not tested: that MLflow's UI does *not* list the children on shorter addresses (the bare experiment
# page opens the GenAI overview, ``/runs`` the GenAI navigation, ``/runs?workflowType=machine_learning``
# folds the children under their parent). That is MLflow's behaviour on addresses bib-ray never prints,
# and the reason runs_table_url carries all three parts; the test above is the one a bib-ray change fails.
