"""Check every path and store a command will use before it does any work.

Why: a bad output folder or tracking URI used to surface only when first used, as a long traceback,
and for ``search``/``ablate`` only after minutes of pre-training. Here each place a command writes to
or reads from (output folder or file, MLflow tracking URI and its store, Tune storage, Optuna
storage, the cache folder) is checked first, cheaply and without creating anything: a problem is a
:class:`~bib_ray.errors.BibInputError` naming the option and the fix (one line, exit code 2), raised
before any pre-training, Ray start or MLflow run.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from bib_ray.errors import BibInputError

SERVER_TIMEOUT_S = 5.0
DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
UNCHECKED_SCHEMES = ("databricks", "databricks-uc", "uc")  # need credentials; MLflow reports them itself
SQLITE_HEADER = b"SQLite format 3\x00"
DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"  # as bib_ray.tracking.store.DEFAULT_URI


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def _probe_writable(option: str, folder: Path, fix: str) -> None:
    """Create and remove a file in ``folder``: the only honest test (permission bits say nothing
    about read-only mounts or a root user)."""
    try:
        handle, name = tempfile.mkstemp(prefix=".bib_ray_probe_", dir=folder)
        os.close(handle)
        os.unlink(name)
    except OSError as err:
        raise BibInputError(option, f"folder {str(folder)!r} is not writable ({err.strerror or err})", fix) from None


def check_folder(option: str, path: str | Path, fix: str = "give a writable folder") -> Path:
    """A folder the command will create (if needed) and write into."""
    target = Path(path).expanduser().absolute()
    if target.exists() and not target.is_dir():
        raise BibInputError(option, f"{str(path)!r} is a file, not a folder", fix)
    base = _nearest_existing(target)
    if not base.is_dir():
        raise BibInputError(option, f"cannot create folder {str(path)!r}: {str(base)!r} is a file", fix)
    _probe_writable(option, base, fix)
    return target


def check_file(option: str, path: str | Path, fix: str = "give a file path in a writable folder") -> Path:
    """A file the command will (over)write."""
    target = Path(path).expanduser().absolute()
    if target.is_dir():
        raise BibInputError(option, f"{str(path)!r} is a folder, not a file", fix)
    check_folder(option, target.parent, fix)
    if target.exists():
        try:
            open(target, "ab").close()  # opened for writing, nothing written
        except OSError as err:
            raise BibInputError(option, f"cannot write {str(path)!r} ({err.strerror or err})", fix) from None
    return target


def _check_sqlite_file(option: str, db: Path, fix: str) -> None:
    """An SQLite store: its folder must exist and be writable; an existing file must be a database."""
    if not db.parent.exists():
        raise BibInputError(option, f"folder {str(db.parent)!r} of the SQLite store does not exist",
                            "create it or " + fix)
    if not db.parent.is_dir():
        raise BibInputError(option, f"{str(db.parent)!r}, the SQLite store's folder, is a file", fix)
    if db.is_dir():
        raise BibInputError(option, f"{str(db)!r} is a folder, not an SQLite file", fix)
    check_folder(option, db.parent, fix)  # SQLite writes a journal beside the file
    if not db.exists():
        return
    try:
        with open(db, "rb") as handle:
            head = handle.read(len(SQLITE_HEADER))
        if head and head != SQLITE_HEADER:  # SQLite itself takes a short file of anything as empty
            raise sqlite3.DatabaseError("file is not a database")
        connection = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            connection.execute("select count(*) from sqlite_master").fetchone()
        finally:
            connection.close()
        open(db, "r+b").close()  # opened for writing, nothing written
    except sqlite3.OperationalError as err:
        if "locked" in str(err):  # a writer holds it right now: the store itself retries
            return
        raise BibInputError(option, f"cannot open the SQLite store {str(db)!r} ({err})", fix) from None
    except sqlite3.DatabaseError as err:
        raise BibInputError(option, f"{str(db)!r} is not a usable SQLite database ({err})",
                            "give another file; move this one aside if it is not yours") from None
    except OSError as err:
        raise BibInputError(option, f"cannot write the SQLite store {str(db)!r} ({err.strerror or err})", fix) \
            from None


def _sqlite_path(uri: str) -> Path | None:
    rest = uri.split(":///", 1)[1] if ":///" in uri else ""
    if not rest or rest.startswith(":memory:"):
        return None
    db = Path(rest.split("?", 1)[0])
    return db if db.is_absolute() else Path.cwd() / db


def _check_server(option: str, uri: str, fix: str) -> None:
    """Any HTTP answer (even an error status) means a server is there; no answer is the problem."""
    parsed = urllib.parse.urlsplit(uri.rstrip("/") + "/health")
    request = urllib.request.Request(parsed._replace(netloc=parsed.netloc.rpartition("@")[2]).geturl())
    if parsed.username is not None:  # user:password@ as MLflow's client sends it: HTTP basic auth
        import base64

        pair = f"{urllib.parse.unquote(parsed.username)}:{urllib.parse.unquote(parsed.password or '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=SERVER_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise BibInputError(option, f"cannot reach the MLflow server at {uri} ({reason})", fix) from None


def _check_db_server(option: str, uri: str, scheme: str, fix: str) -> None:
    parsed = urllib.parse.urlparse(uri)
    host = parsed.hostname or "localhost"
    port = parsed.port or DB_PORTS[scheme]
    try:
        socket.create_connection((host, port), timeout=SERVER_TIMEOUT_S).close()
    except OSError as err:
        raise BibInputError(option, f"cannot reach the {scheme} database at {host}:{port} "
                                    f"({err.strerror or err})", fix) from None


DRIVER_FIXES = {"postgresql": 'pip install "bib-ray[postgres]" and write postgresql+psycopg2://...',
                "mysql": "pip install pymysql and write mysql+pymysql://..."}


def check_db_driver(option: str, uri: str) -> None:
    """The DBAPI driver SQLAlchemy will pick for ``uri``'s dialect (``postgresql://`` means psycopg 3
    in SQLAlchemy 2.1, ``postgresql+psycopg2://`` psycopg2) must be importable: else MLflow or Optuna
    fail later with a long ``ModuleNotFoundError`` traceback, after Ray started."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(uri)
        dialect = url.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as err:
        raise BibInputError(option, f"{uri!r} is not a database URL SQLAlchemy knows ({err})",
                            "write e.g. postgresql+psycopg2://USER:PASSWORD@HOST/DB") from None
    try:
        dialect.import_dbapi()
    except ImportError as err:
        backend = url.get_backend_name()
        module = getattr(err, "name", None) or str(err)
        fix = DRIVER_FIXES.get(backend, f"install the Python package of the {dialect.driver} driver")
        if dialect.driver == "psycopg2":
            fix = 'pip install "bib-ray[postgres]" (psycopg2-binary)'
        elif backend == "postgresql":
            fix = f'pip install "psycopg[binary]", or {fix}'
        raise BibInputError(option, f"{backend} driver {dialect.driver!r} is not installed (no module "
                                    f"{module!r})", fix) from None


def check_tracking_uri(flag: str | None) -> str:
    """The tracking URI the command will use (as resolve_tracking_uri picks it), checked."""
    option = "--tracking-uri"
    if not flag and os.environ.get("MLFLOW_TRACKING_URI"):
        option = "MLFLOW_TRACKING_URI"
    uri = flag or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    fix = f"give another {option}" if option.startswith("--") else "set MLFLOW_TRACKING_URI or give --tracking-uri"
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if len(scheme) == 1:  # a Windows drive letter, not a scheme
        scheme = ""
    base = scheme.split("+", 1)[0]
    if base == "sqlite":
        db = _sqlite_path(uri)
        if db is None:
            raise BibInputError(option, f"{uri!r} names no SQLite file", "write sqlite:///PATH/mlruns.db")
        _check_sqlite_file(option, db, fix)
    elif base in ("http", "https"):
        _check_server(option, uri, "start the server (mlflow server --host 127.0.0.1 --port PORT) or " + fix)
    elif base in ("", "file"):
        folder = urllib.parse.urlparse(uri).path if base == "file" else uri
        check_folder(option, folder, "give a writable folder, or " + fix)
    elif base in DB_PORTS:
        check_db_driver(option, uri)
        _check_db_server(option, uri, base, "start the database or " + fix)
    elif base not in UNCHECKED_SCHEMES:
        raise BibInputError(option, f"unknown scheme {scheme!r} in {uri!r}",
                            "use sqlite:///PATH, http(s)://HOST:PORT, a folder, or a postgresql/mysql URL")
    return uri


def check_optuna_storage(url: str, option: str = "--optuna-storage") -> None:
    """An Optuna RDB storage URL (SQLAlchemy form): the same checks as an MLflow store."""
    scheme = urllib.parse.urlparse(url).scheme.lower()
    base = scheme.split("+", 1)[0]
    fix = f"give another {option}"
    if base == "sqlite":
        db = _sqlite_path(url)
        if db is None:
            raise BibInputError(option, f"{url!r} names no SQLite file", "write sqlite:///PATH/optuna.db")
        _check_sqlite_file(option, db, fix)
    elif base in DB_PORTS:
        check_db_driver(option, url)
        _check_db_server(option, url, base, "start the database or " + fix)
    else:
        raise BibInputError(option, f"unknown scheme {scheme!r} in {url!r}",
                            "use sqlite:///PATH or a postgresql/mysql URL")


def check_cache_folder() -> Path:
    """The cache root (and its entry folders, where they exist) must be writable folders."""
    from bib_ray.proxy.small_lm import cache_root

    root = cache_root()
    option = "BIB_RAY_CACHE" if os.environ.get("BIB_RAY_CACHE") else f"cache folder {root}"
    fix = "set BIB_RAY_CACHE to a writable folder"
    check_folder(option, root, fix)
    for kind in ("lm", "embeddings", "auxiliary"):
        if (root / kind).exists():
            check_folder(option, root / kind, fix)
    return root


def preflight(*, folders: dict[str, Any] | None = None, files: dict[str, Any] | None = None,
              tracking: bool = False, tracking_flag: str | None = None, tune_storage: bool = False,
              tune_storage_flag: str | None = None, optuna_storage: str | None = None,
              cache: bool = False) -> None:
    """Check what a command will use; the first problem raises :class:`BibInputError`.

    ``folders``/``files`` map an option name to the folder or file it names. ``optuna_storage`` is
    an Optuna storage URL, checked when given.
    """
    for option, path in (folders or {}).items():
        check_folder(option, path)
    for option, path in (files or {}).items():
        check_file(option, path)
    if tune_storage:
        check_folder("--storage", tune_storage_flag or "bib_ray_runs", "give --storage a writable folder")
    if optuna_storage:
        check_optuna_storage(optuna_storage)
    if cache:
        check_cache_folder()
    if tracking:
        check_tracking_uri(tracking_flag)


def check_command_paths(args: Any) -> None:
    """What each ``bib-ray`` command writes to or reads from, checked before it starts."""
    command = args.command
    local = not getattr(args, "address", None)  # on a cluster each node uses its own cache
    optuna = getattr(args, "optuna_storage", None)
    if command == "run":
        preflight(folders={"--output": args.output}, cache=True)
    elif command == "pretrain":
        preflight(cache=True)
    elif command == "search":
        preflight(files={"--best-output": args.best_output}, tune_storage=True, tune_storage_flag=args.storage,
                  optuna_storage=optuna, cache=local, tracking=True, tracking_flag=args.tracking_uri)
    elif command == "ablate":
        preflight(folders={"--output": args.output}, tune_storage=True, tune_storage_flag=args.storage,
                  cache=local, tracking=True, tracking_flag=args.tracking_uri)
    elif command == "report":
        preflight(folders={"--output": args.output}, tracking=True, tracking_flag=args.tracking_uri)
