"""Database URIs (postgresql://, mysql://) for --tracking-uri, MLFLOW_TRACKING_URI and --optuna-storage:
a missing DBAPI driver is one line naming the option, the driver and the fix, before any work starts
(it used to pass the preflight and end in a 60-line ModuleNotFoundError traceback after Ray started)."""

from __future__ import annotations

import importlib.util
import socket
import tomllib
from pathlib import Path

import pytest
import yaml

from bib_ray.errors import BibInputError
from bib_ray.preflight import _check_db_server, check_db_driver
from helpers import TINY_BASE, assert_one_line_error, run_cli

SPACE = {"name": "db_uri_search", "base": TINY_BASE, "trials": 1,
         "params": {"engine.lr": {"type": "loguniform", "low": 0.01, "high": 1.0}}}
PLAN = {"name": "db_uri_plan", "base": TINY_BASE, "variants": ["fixed"], "adaptive_eta": [False],
        "baseline": False, "seeds": [0]}
ABSENT = ("psycopg", "psycopg2", "MySQLdb")  # the drivers these URLs pick; none is installed here


def test_the_drivers_are_absent_here():
    """What the tests below rely on: if one of these were installed, its case would test nothing."""
    assert [name for name in ABSENT if importlib.util.find_spec(name) is not None] == []


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("url,driver,fix", [
    ("postgresql://eco:ecopw@127.0.0.1:{port}/db", "'psycopg'", "postgresql+psycopg2://"),
    ("postgresql+psycopg2://eco:ecopw@127.0.0.1:{port}/db", "'psycopg2'", 'pip install "bib-ray[postgres]"'),
    ("mysql+mysqldb://eco:ecopw@127.0.0.1:{port}/db", "'mysqldb'", "mysql+pymysql://"),
])
def test_missing_driver_for_tracking_uri_is_one_line(tmp_path, url, driver, fix):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    uri = url.format(port=_closed_port())
    proc = run_cli(["search", "space.yaml", "--tracking-uri", uri, "--storage", str(tmp_path / "runs")], cwd=tmp_path)
    assert_one_line_error(proc, "--tracking-uri:", driver, "is not installed", fix)
    assert "ecopw" not in proc.stdout + proc.stderr  # the password is masked even in the error
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns.db").exists()  # nothing started


def test_missing_driver_in_the_environment_names_the_variable(tmp_path):
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(PLAN))
    proc = run_cli(["ablate", "plan.yaml"], cwd=tmp_path,
                   env={"MLFLOW_TRACKING_URI": f"postgresql://eco:ecopw@127.0.0.1:{_closed_port()}/db"})
    assert_one_line_error(proc, "MLFLOW_TRACKING_URI:", "'psycopg' is not installed", "bib-ray[postgres]")
    assert "ecopw" not in proc.stdout + proc.stderr


def test_missing_driver_for_optuna_storage_is_one_line(tmp_path):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    proc = run_cli(["search", "space.yaml", "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--optuna-storage",
                    f"postgresql+psycopg2://eco:ecopw@127.0.0.1:{_closed_port()}/optuna"], cwd=tmp_path)
    assert_one_line_error(proc, "--optuna-storage:", "'psycopg2' is not installed", "bib-ray[postgres]",
                          store=tmp_path / "m.db")
    assert "ecopw" not in proc.stdout + proc.stderr


def test_an_unknown_driver_is_one_line():
    with pytest.raises(BibInputError, match="--tracking-uri: 'postgresql\\+nosuch://h/db' is not a database URL"):
        check_db_driver("--tracking-uri", "postgresql+nosuch://h/db")


def test_a_database_that_does_not_answer_is_one_line():
    """With the driver present, the server must answer: a short TCP connect, refused here."""
    port = _closed_port()
    with pytest.raises(BibInputError) as err:
        _check_db_server("--tracking-uri", f"postgresql+psycopg2://eco:ecopw@127.0.0.1:{port}/db", "postgresql",
                         "start the database")
    assert str(err.value).startswith(f"--tracking-uri: cannot reach the postgresql database at 127.0.0.1:{port}")


def test_the_postgres_extra_installs_psycopg2():
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert any(dep.startswith("psycopg2-binary") for dep in project["optional-dependencies"]["postgres"])
