"""No secret leaves the command line: a password in a URI (tracking, Optuna storage, --address) is
masked as *** in everything bib-ray prints, logs, writes to files, tags or params.

The end-to-end tests plant a password in the userinfo of a real loopback MLflow server's address (MLflow's
client sends it as HTTP basic auth, which a server without auth ignores), once as --tracking-uri and
once as $MLFLOW_TRACKING_URI, and grep every byte bib-ray left: stdout, stderr, the result files, the
Tune experiment folder, and the tracking store itself (the server's database and artifact folder)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from bib_ray.distributed.tune_job import resume_line
from bib_ray.errors import BibInputError
from bib_ray.redact import mask_secrets, remember, unmask
from helpers import TINY_BASE, run_cli
from mlflow_server import running_mlflow_server

PASSWORD = "s3cretPW"


@pytest.mark.parametrize("text,masked", [
    ("postgresql+psycopg2://eco:ecopw@db.lab:5432/mlflow", "postgresql+psycopg2://eco:***@db.lab:5432/mlflow"),
    ("at http://user:p%40ss@127.0.0.1:5000 and then", "at http://user:***@127.0.0.1:5000 and then"),
    ("'mysql+pymysql://root:pw@h/db'", "'mysql+pymysql://root:***@h/db'"),
    ("ray://admin:tok@head:10001", "ray://admin:***@head:10001"),
    ("postgresql://h/db?user=eco&password=ecopw&sslmode=require", "postgresql://h/db?user=eco&password=***&sslmode=require"),
    ("sqlite:////tmp/x/mlruns.db", "sqlite:////tmp/x/mlruns.db"),  # nothing secret: unchanged
    ("http://127.0.0.1:5000/#/experiments/1", "http://127.0.0.1:5000/#/experiments/1"),
    ("http://user@host:5000", "http://user@host:5000"),  # a user name alone is no secret
])
def test_mask_secrets(text, masked):
    assert mask_secrets(text) == masked


def test_masked_uri_is_given_back_in_this_process_only():
    uri = "postgresql+psycopg2://eco:ecopw2@db.lab/mlflow"
    assert remember(uri) == "postgresql+psycopg2://eco:***@db.lab/mlflow"
    assert unmask(remember(uri)) == uri and unmask("sqlite:///x.db") == "sqlite:///x.db"


def test_an_error_message_never_holds_the_password():
    err = BibInputError("--tracking-uri", "cannot reach postgresql://eco:ecopw@db/x", "start it")
    assert "ecopw" not in str(err) and "eco:***@db" in str(err)
    again = pickle.loads(pickle.dumps(err))  # as a Ray worker sends it back
    assert str(again) == str(err) and (again.field, again.problem, again.fix) == (err.field, err.problem, err.fix)


def test_resume_command_masks_a_flag_and_leaves_out_the_environments_uri():
    uri = "http://eco:ecopw@127.0.0.1:5000"
    shown = resume_line(["bib-ray", "ablate", "p.yaml"], "ray://a:tok@h:1", uri, uri, None,
                        "postgresql+psycopg2://o:opw@db/optuna")
    assert shown == ("bib-ray ablate p.yaml --resume --address ray://a:***@h:1 --tracking-uri "
                     "http://eco:***@127.0.0.1:5000 --optuna-storage postgresql+psycopg2://o:***@db/optuna")
    from_env = resume_line(["bib-ray", "ablate", "p.yaml"], None, None, uri, "/s")
    assert from_env == "bib-ray ablate p.yaml --resume --storage /s"  # the same shell still has it
    plain = resume_line(["bib-ray", "ablate", "p.yaml"], None, None, "sqlite:////w/mlruns.db", None)
    assert plain == "bib-ray ablate p.yaml --resume --tracking-uri sqlite:////w/mlruns.db"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real MLflow server on loopback; yields (its address with the password planted, its folder)."""
    folder = tmp_path_factory.mktemp("secret_server")
    with running_mlflow_server(folder) as url:
        yield url.replace("http://", f"http://eco:{PASSWORD}@"), folder


def _leaks(*roots: Path) -> list[str]:
    """Every file under ``roots`` whose bytes hold the password."""
    return [str(p) for root in roots for p in Path(root).rglob("*") if p.is_file() and
            PASSWORD.encode() in p.read_bytes()]


def _store_leaks(uri: str, experiment: str) -> list[str]:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert runs
    return [f"{r.info.run_name}: {k}" for r in runs for k, v in {**r.data.tags, **r.data.params}.items()
            if PASSWORD in v]


@pytest.mark.slow
def test_search_through_a_server_with_a_password_prints_and_stores_none(server, tmp_path):
    """Also the README's cluster command in a fresh folder: an empty working folder and a --storage folder
    that does not exist yet (the default Optuna study goes into it, so it is created first)."""
    uri, server_folder = server
    space = {"name": "secret_search", "base": TINY_BASE, "trials": 2, "concurrency": 2,
             "scheduler": {"type": "none"}, "params": {"engine.lr": {"type": "loguniform", "low": 0.01, "high": 1.0}}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    fresh, storage = tmp_path / "fresh", tmp_path / "not" / "yet" / "runs"
    fresh.mkdir()
    proc = run_cli(["search", str(tmp_path / "space.yaml"), "--tracking-uri", uri, "--storage", str(storage)],
                   cwd=fresh, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (storage / "optuna.db").is_file() and (fresh / "best.yaml").is_file()
    assert "MLflow parent run" in proc.stdout and "eco:***@127.0.0.1" in proc.stdout  # masked, not left out
    assert PASSWORD not in proc.stdout + proc.stderr
    assert _leaks(tmp_path, server_folder) == []  # best.yaml, Tune's folder, the server's database and artifacts
    assert _store_leaks(uri, "secret_search") == []
    parent = [r for r in MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name(
        "secret_search").experiment_id]) if "mlflow.parentRunId" not in r.data.tags][0]
    assert parent.info.status == "FINISHED" and parent.data.tags["optuna_storage"].startswith("sqlite:///")


@pytest.mark.slow
def test_ablation_with_the_password_in_the_environment_prints_and_stores_none(server, tmp_path):
    uri, server_folder = server
    plan = {"name": "secret_plan", "base": TINY_BASE, "variants": ["fixed"], "adaptive_eta": [False],
            "baseline": False, "seeds": [0]}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    proc = run_cli(["ablate", "plan.yaml", "--storage", str(tmp_path / "runs"), "--output", str(tmp_path / "report")],
                   cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MLflow runs table: http://eco:***@127.0.0.1" in proc.stdout
    assert PASSWORD not in proc.stdout + proc.stderr
    assert _leaks(tmp_path, server_folder) == []
    assert _store_leaks(uri, "secret_plan") == []


def test_default_optuna_storage_folder_is_created_and_its_errors_name_no_flag(tmp_path):
    """The default study lives in the Tune storage folder, which may not exist yet: it is created; an
    error about the default storage names it, not --optuna-storage (which the user never gave)."""
    from bib_ray.distributed.optuna_study import DEFAULT_OPTION, prepare_study
    from bib_ray.distributed.space import parse_search_space

    space = parse_search_space({"name": "fresh", "base": TINY_BASE,
                                "params": {"engine.lr": {"type": "loguniform", "low": 0.01, "high": 1.0}}}, "s")
    db = tmp_path / "not" / "yet" / "optuna.db"
    prepare_study(space, f"sqlite:///{db}", resume=False, option=DEFAULT_OPTION)
    assert db.is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(BibInputError) as err:
        prepare_study(space, f"sqlite:///{tmp_path}/file/optuna.db", resume=False, option=DEFAULT_OPTION)
    assert str(err.value).startswith("Optuna storage: ") and "--optuna-storage sqlite:///" in str(err.value)
