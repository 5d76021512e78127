"""Every path and store a command uses is checked before any work: one line, exit code 2.

For each class of bad output folder, tracking URI, Tune storage and cache folder, ``run``,
``pretrain``, ``search``, ``ablate`` and ``report`` must stop with one ``bib-ray: error:`` line naming
the option, before any pre-training (no LM appears in the cache), Ray start or MLflow run (no store
is created and no run is left RUNNING). The settings are otherwise valid, so without the check each
command would go on to pre-train or start Ray.
"""

from __future__ import annotations

import argparse
import http.server
import socket
import sqlite3
import sys
import threading
from pathlib import Path

import pytest
import yaml

from bib_ray.cli import main
from bib_ray.errors import BibInputError
from bib_ray.preflight import check_command_paths, check_optuna_storage, preflight

from helpers import TINY_BASE, error_line_problems

SPACE = {"name": "pf_space", "base": TINY_BASE, "trials": 2,
         "params": {"engine.lr": {"type": "loguniform", "low": 0.01, "high": 1.0}}}
PLAN = {"name": "pf_plan", "base": TINY_BASE, "variants": ["forward"], "adaptive_eta": [False],
        "baseline": False, "seeds": [0]}
UNWRITABLE = "/proc/bib_ray_preflight_test"  # /proc takes no new files, even from root


def refused_uri() -> str:
    """http:// on a loopback port nobody listens on (the OS just handed it out and took it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# (id, argv with {tmp} for the test folder, environment, text the error line must contain)
CASES = [
    ("run-output-is-file", ["run", "--config", "c.yaml", "--output", "afile"], {}, "--output"),
    ("run-output-parent-is-file", ["run", "--config", "c.yaml", "--output", "afile/out"], {}, "--output"),
    ("run-output-not-writable", ["run", "--config", "c.yaml", "--output", UNWRITABLE], {}, "--output"),
    ("run-cache-is-file", ["run", "--config", "c.yaml"], {"BIB_RAY_CACHE": "{tmp}/afile"}, "BIB_RAY_CACHE"),
    ("pretrain-cache-not-writable", ["pretrain", "--config", "c.yaml"], {"BIB_RAY_CACHE": UNWRITABLE},
     "BIB_RAY_CACHE"),
    ("pretrain-cache-lm-folder-is-file", ["pretrain", "--config", "c.yaml"], {"BIB_RAY_CACHE": "{tmp}/badcache"},
     "BIB_RAY_CACHE"),
    ("search-best-output-under-file", ["search", "s.yaml", "--best-output", "afile/best.yaml"], {}, "--best-output"),
    ("search-best-output-is-folder", ["search", "s.yaml", "--best-output", "adir"], {}, "--best-output"),
    ("search-best-output-not-writable", ["search", "s.yaml", "--best-output", UNWRITABLE + "/b.yaml"], {},
     "--best-output"),
    ("search-tracking-unknown-scheme", ["search", "s.yaml", "--tracking-uri", "foo://x"], {}, "unknown scheme"),
    ("search-tracking-env-unknown-scheme", ["search", "s.yaml"], {"MLFLOW_TRACKING_URI": "bad://y"},
     "MLFLOW_TRACKING_URI"),
    ("search-sqlite-folder-missing", ["search", "s.yaml", "--tracking-uri", "sqlite:///{tmp}/no/such/m.db"], {},
     "does not exist"),
    ("search-sqlite-folder-is-file", ["search", "s.yaml", "--tracking-uri", "sqlite:///{tmp}/afile/m.db"], {},
     "is a file"),
    ("search-sqlite-folder-not-writable", ["search", "s.yaml", "--tracking-uri", "sqlite:////proc/m.db"], {},
     "not writable"),
    ("search-sqlite-not-a-database", ["search", "s.yaml", "--tracking-uri", "sqlite:///{tmp}/afile"], {},
     "not a usable SQLite database"),
    ("search-sqlite-is-folder", ["search", "s.yaml", "--tracking-uri", "sqlite:///{tmp}/adir"], {}, "is a folder"),
    ("search-http-refused", ["search", "s.yaml", "--tracking-uri", "{refused}"], {}, "cannot reach"),
    ("search-storage-is-file", ["search", "s.yaml", "--storage", "afile"], {}, "--storage"),
    ("search-storage-not-writable", ["search", "s.yaml", "--storage", UNWRITABLE], {}, "--storage"),
    ("search-cache-is-file", ["search", "s.yaml"], {"BIB_RAY_CACHE": "{tmp}/afile"}, "BIB_RAY_CACHE"),
    ("ablate-output-is-file", ["ablate", "p.yaml", "--output", "afile"], {}, "--output"),
    ("ablate-output-not-writable", ["ablate", "p.yaml", "--output", UNWRITABLE], {}, "--output"),
    ("ablate-http-refused", ["ablate", "p.yaml", "--tracking-uri", "{refused}"], {}, "cannot reach"),
    ("ablate-unknown-scheme", ["ablate", "p.yaml", "--tracking-uri", "mlflow://x"], {}, "unknown scheme"),
    ("ablate-sqlite-not-a-database", ["ablate", "p.yaml", "--tracking-uri", "sqlite:///{tmp}/afile"], {},
     "not a usable SQLite database"),
    ("ablate-storage-under-file", ["ablate", "p.yaml", "--storage", "afile/runs"], {}, "--storage"),
    ("ablate-cache-under-file", ["ablate", "p.yaml"], {"BIB_RAY_CACHE": "{tmp}/afile/cache"}, "BIB_RAY_CACHE"),
    ("report-output-is-file", ["report", "x", "--output", "afile"], {}, "--output"),
    ("report-http-refused", ["report", "x", "--tracking-uri", "{refused}"], {}, "cannot reach"),
    ("report-unknown-scheme", ["report", "x", "--tracking-uri", "s3://bucket/db"], {}, "unknown scheme"),
]


@pytest.mark.parametrize("case_id,argv,env,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_path_or_store_stops_before_any_work(case_id, argv, env, needle, tmp_path, monkeypatch, capsys,
                                                 observed):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("a regular file\n")
    (tmp_path / "adir").mkdir()
    (tmp_path / "badcache").mkdir()
    (tmp_path / "badcache" / "lm").write_text("not a folder\n")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(TINY_BASE))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(SPACE))
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(PLAN))
    refused = refused_uri()

    def fill(text: str) -> str:
        return text.replace("{tmp}", str(tmp_path)).replace("{refused}", refused)

    for key, value in env.items():
        monkeypatch.setenv(key, fill(value))
    argv = [fill(a) for a in argv]
    if argv[0] in ("search", "ablate", "report") and "--tracking-uri" not in argv and "MLFLOW_TRACKING_URI" not in env:
        argv += ["--tracking-uri", f"sqlite:///{tmp_path}/t.db"]  # a good store: only the one fault is bad
    before = sorted(p.name for p in tmp_path.iterdir())

    code = main(argv)

    err = capsys.readouterr().err.strip().splitlines()
    problems = error_line_problems(code, err, needle)
    # nothing started: no LM pre-trained, no store or Tune folder created, no Ray
    if (tmp_path / "cache" / "lm").exists():
        problems.append("an LM was pre-trained")
    if sorted(p.name for p in tmp_path.iterdir()) != before:
        problems.append(f"files were created: {sorted(p.name for p in tmp_path.iterdir())} (before: {before})")
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        problems.append("Ray was started")
    observed.record_case("bad path/store cases stopping before any work", argv[0], problems)
    assert not problems, (case_id, problems)


@pytest.fixture()
def loopback_http():
    """Any HTTP server on loopback (it answers 404): reachable is all the preflight asks."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_good_paths_pass_and_nothing_is_created(tmp_path, monkeypatch, loopback_http):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "real.db"
    with sqlite3.connect(db) as connection:
        connection.execute("create table t (x)")
    (tmp_path / "empty.db").touch()  # SQLite takes an empty file as an empty database
    for uri in (f"sqlite:///{db}", f"sqlite:///{tmp_path}/empty.db", f"sqlite:///{tmp_path}/new.db", loopback_http,
                str(tmp_path / "mlruns_folder")):
        args = argparse.Namespace(command="search", best_output=str(tmp_path / "out" / "best.yaml"),
                                  storage=str(tmp_path / "runs"), tracking_uri=uri, address=None)
        check_command_paths(args)
        args = argparse.Namespace(command="ablate", output=str(tmp_path / "report"), storage=None,
                                  tracking_uri=uri, address=None)
        check_command_paths(args)
    check_command_paths(argparse.Namespace(command="run", output=str(tmp_path / "a" / "b")))
    check_command_paths(argparse.Namespace(command="pretrain"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db", "real.db"]
    assert not Path(tmp_path / "cache").exists()  # the cache folder is checked, not created


def test_optuna_storage_is_checked_when_a_command_has_one(tmp_path, monkeypatch):
    """The hook for ``--optuna-storage``: a search whose args carry it has it checked first."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    good = argparse.Namespace(command="search", best_output="best.yaml", storage=None, address=None,
                              tracking_uri=f"sqlite:///{tmp_path}/m.db", optuna_storage=f"sqlite:///{tmp_path}/o.db")
    check_command_paths(good)
    for url, needle in ((f"sqlite:///{tmp_path}/no/dir/o.db", "does not exist"),
                        (f"sqlite:///{tmp_path}/afile", "not a usable SQLite database"),
                        ("redis://localhost", "unknown scheme")):
        bad = argparse.Namespace(**{**vars(good), "optuna_storage": url})
        with pytest.raises(BibInputError) as err:
            check_command_paths(bad)
        assert str(err.value).startswith("--optuna-storage: ") and needle in str(err.value)
    with pytest.raises(BibInputError, match="--optuna-storage: mysql driver 'mysqldb' is not installed"):
        check_optuna_storage(f"mysql+mysqldb://u:p@127.0.0.1:{int(refused_uri().rsplit(':', 1)[1])}/db")


def test_a_cluster_search_does_not_check_the_drivers_cache(tmp_path, monkeypatch):
    """With --address the trials pre-train on the cluster's nodes, so the driver's cache is not used."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("BIB_RAY_CACHE", str(tmp_path / "afile"))
    args = argparse.Namespace(command="search", best_output="best.yaml", storage=None, address="auto",
                              tracking_uri=f"sqlite:///{tmp_path}/m.db")
    check_command_paths(args)
    with pytest.raises(BibInputError, match="BIB_RAY_CACHE"):
        check_command_paths(argparse.Namespace(**{**vars(args), "address": None}))
    with pytest.raises(BibInputError, match="BIB_RAY_CACHE"):
        preflight(cache=True)
