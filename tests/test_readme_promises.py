"""README promises that no other test exercised, each used the way the README says, in this process.

* ``bib-ray run --lm <local folder>``: a masked LM saved with ``save_pretrained`` runs end to end.
* ``bib-ray pretrain``: pre-trains and caches the default LM; a run then uses it without pre-training.
* The MLflow store: ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlruns.db`` in
  the working folder.
* ``bib-ray bench engine`` prints its figures (tiny flags; the cache holds a tiny LM under the default
  LM's key, so no pre-training).
* Orphan trials: a child the killed driver left open that Tune never recorded is tagged
  ``bib_ray.orphan`` and moved to MLflow's deleted runs.
* ``max_failures`` defaults to 2 in searches and plans.
* ``bib-ray cache clear`` takes each entry's lock: it waits while a job holds it.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

from bib_ray.cli import main

from conftest import TINY
from helpers import TINY_BASE


def test_run_with_a_local_lm_folder(tiny_lm_dir, tmp_path, capsys):
    """README: ``--lm /models/DNABERT-3`` (a local folder). The folder's LM is the one the run used."""
    from bib_ray.proxy.lm_proxy import LMProxy

    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY_BASE))
    code = main(["run", "--config", str(tmp_path / "tiny.yaml"), "--lm", tiny_lm_dir, "--output",
                 str(tmp_path / "out"), "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["config"]["lm"] == tiny_lm_dir
    assert result["lm_fingerprint"] == LMProxy.load(tiny_lm_dir, "ACGT").fingerprint()
    assert 0.0 <= result["normalized_median"] <= result["normalized_max"] <= 1.0
    assert not (Path(os.environ["BIB_RAY_CACHE"]) / "lm").exists()  # no default LM was pre-trained


def test_pretrain_caches_the_default_lm_that_a_run_then_uses(tmp_path, capsys):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY_BASE))
    assert main(["pretrain", "--config", str(tmp_path / "tiny.yaml")]) == 0
    out = capsys.readouterr().out
    lms = sorted((Path(os.environ["BIB_RAY_CACHE"]) / "lm").iterdir())
    folders = [p for p in lms if p.is_dir()]
    assert len(folders) == 1 and f"default LM for tfbind8: {folders[0]}" in out
    meta = json.loads((folders[0] / "bib_ray_pretrain.json").read_text())
    assert meta["config"]["steps"] == 20 and "after 20 steps" in out
    assert "step 20/20" in out  # the pre-training ran here
    code = main(["run", "--config", str(tmp_path / "tiny.yaml"), "--output", str(tmp_path / "out"), "--no-progress"])
    again = capsys.readouterr().out
    assert code == 0 and "pre-training" not in again and "step 20/20" not in again  # the cached LM was used
    assert [p for p in (Path(os.environ["BIB_RAY_CACHE"]) / "lm").iterdir() if p.is_dir()] == folders


def test_tracking_uri_flag_then_environment_then_mlruns_db(tmp_path, monkeypatch):
    from bib_ray.tracking.store import resolve_tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlruns.db"
    (tmp_path / "env").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/env/m.db")
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/env/m.db"
    assert resolve_tracking_uri(f"sqlite:///{tmp_path}/flag.db") == f"sqlite:///{tmp_path}/flag.db"


def test_report_uses_the_default_store_and_the_environment(tmp_path, monkeypatch, capsys):
    """``bib-ray report NAME`` without ``--tracking-uri`` reads ./mlruns.db, or $MLFLOW_TRACKING_URI."""
    from ablation_fixtures import local_store, make_synthetic_ablation

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = local_store(f"sqlite:///{tmp_path}/mlruns.db", "in_default", tmp_path / "a1")
    make_synthetic_ablation(default, "in_default", ["forward", "fixed"], [0, 1])
    assert main(["report", "in_default", "--output", str(tmp_path / "r1")]) == 0
    assert "| tfbind8 | forward |" in capsys.readouterr().out
    (tmp_path / "elsewhere").mkdir()
    uri = f"sqlite:///{tmp_path}/elsewhere/m.db"
    make_synthetic_ablation(local_store(uri, "in_env", tmp_path / "a2"), "in_env", ["forward", "fixed"], [0, 1])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["report", "in_env", "--output", str(tmp_path / "r2")]) == 0
    assert "| tfbind8 | fixed |" in capsys.readouterr().out
    assert main(["report", "in_default", "--output", str(tmp_path / "r3")]) == 2  # not in the environment's store
    assert "in_default" in capsys.readouterr().err


def _tiny_lm_under_the_default_key(task_name: str = "tfbind8") -> Path:
    """A tiny BERT cached where the default LM of ``task_name`` goes, so nothing pre-trains for minutes."""
    from bib_ray.cache_store import ensure_entry
    from bib_ray.proxy.small_lm import build_small_bert, default_lm_path
    from bib_ray.spec import RunSpec
    from bib_ray.tasks import make_task

    task = make_task(task_name)
    config = RunSpec().lm_pretrain.resolved(task.length)
    path = default_lm_path(task.name, task.fingerprint(), config)

    def write(out_dir: Path) -> None:
        model, tokenizer = build_small_bert(task.alphabet, TINY, task.length)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)

    return ensure_entry(path, "lm", write, lambda p: p, task=task.name, lm=path.name,
                        extra={"config": config.model_dump()})


def test_bench_engine_prints_its_figures(capsys):
    _tiny_lm_under_the_default_key()
    assert main(["bench", "engine", "--designs", "4", "--loop-designs", "2", "--steps", "2", "--repeats", "1",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "task=tfbind8" in out and "M=4 steps=2" in out
    speedup = float(out.split("speedup_vs_loop=")[1].split()[0])
    batched = float(out.split("batched:")[1].split()[0])
    loop = float(out.split("loop:")[1].split()[0])
    assert speedup == pytest.approx(batched / loop, rel=0.01)
    assert "peak_rss_mib=" in out


def test_an_orphan_child_is_tagged_and_moved_to_deleted_runs(tmp_path):
    """No Tune state survived (the driver died before its first checkpoint): every open child is an orphan;
    a FINISHED one is left as it was."""
    from mlflow.tracking import MlflowClient

    from bib_ray.distributed.tune_job import reconcile_children
    from bib_ray.tracking.store import Store

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    store = Store(uri, "orphans")
    parent = store.create_run("orphans", {})
    done = store.create_run("t0", {"trial_id": "t0"}, parent_id=parent)
    store.set_status(done, "FINISHED")
    open_child = store.create_run("t1", {"trial_id": "t1"}, parent_id=parent)

    class Books:  # what reconcile_children asks of the MLflow callback when nothing is to be closed
        flushed = 0

        def flush(self) -> None:
            self.flushed += 1

        def replay(self, *args) -> None:
            raise AssertionError("no trial of Tune's to replay")

    books = Books()
    counts = reconcile_children(store, parent, tmp_path / "no_tune_state", books)
    assert counts == {"replayed": 0, "orphaned": 1} and books.flushed == 1
    client = MlflowClient(uri)
    orphan = client.get_run(open_child)
    assert orphan.info.lifecycle_stage == "deleted" and orphan.info.status == "KILLED"
    assert "driver killed" in orphan.data.tags["bib_ray.orphan"]
    kept = client.get_run(done)
    assert kept.info.lifecycle_stage == "active" and kept.info.status == "FINISHED"
    assert "bib_ray.orphan" not in kept.data.tags
    assert [r.info.run_id for r in store.children(parent)] == [done]  # one live child per trial
    client.restore_run(open_child)  # "recoverable there"
    assert client.get_run(open_child).info.lifecycle_stage == "active"


def test_max_failures_defaults_to_two():
    """README: a trial whose worker dies is retried (``max_failures``, default 2), in searches and plans."""
    from bib_ray.distributed.plan import parse_plan
    from bib_ray.distributed.space import parse_search_space

    space = {"name": "s", "base": TINY_BASE, "trials": 2,
             "params": {"engine.lr": {"type": "loguniform", "low": 0.01, "high": 1.0}}}
    plan = {"name": "p", "base": TINY_BASE, "variants": ["forward"], "seeds": [0]}
    assert parse_search_space(space, "s").max_failures == 2 and parse_plan(plan, "p").max_failures == 2
    assert parse_search_space({**space, "max_failures": 0}, "s").max_failures == 0
    assert parse_plan({**plan, "max_failures": 5}, "p").max_failures == 5


def test_cache_clear_waits_for_the_entry_lock(capsys):
    """While a job holds an entry's lock (building or rebuilding it), ``cache clear`` does not remove it; once
    the lock is released, it does."""
    from bib_ray.cache_store import lock_path, write_entry
    from bib_ray.proxy.small_lm import cache_root

    entry = cache_root() / "embeddings" / "tfbind8-held-e.pt"
    entry.parent.mkdir(parents=True, exist_ok=True)
    write_entry(entry, "embeddings", lambda tmp: tmp.write_bytes(b"x" * 50), "tfbind8", "held")
    codes = []
    with FileLock(str(lock_path(entry))):
        clearing = threading.Thread(target=lambda: codes.append(main(["cache", "clear"])))
        clearing.start()
        clearing.join(timeout=2.0)
        assert clearing.is_alive() and entry.exists(), "cache clear removed an entry whose lock was held"
    clearing.join(timeout=60)
    assert codes == [0] and not entry.exists()
    assert "removed 1 entries" in capsys.readouterr().out
