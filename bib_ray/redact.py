"""Passwords in URIs, masked as ``***`` before bib-ray prints, logs, writes or tags anything.

Why: a tracking URI or an Optuna storage URL often carries a database password
(``postgresql+psycopg2://user:PASSWORD@host/db``, ``http://user:PASSWORD@mlflow:5000``). bib-ray repeats
these URIs in its output (the parent run's address, the ``mlflow ui`` hint, the ``--resume`` command,
error lines) and in MLflow tags; anyone reading a log, a terminal scroll-back or the MLflow UI would
read the password. This leaf module is the one place that knows what a secret in a URI looks like;
every place that shows a URI or a text that may hold one goes through :func:`mask_secrets`.

A URI's password is its userinfo after the first ``:`` (RFC 3986) or a ``password=`` style query
parameter (SQLAlchemy and libpq take both). The user name and host stay readable: they say which
store was meant.
"""

from __future__ import annotations

import re

MASK = "***"
# scheme://user:PASSWORD@ ; the password may be empty-free percent-encoded text without '@', '/' or spaces
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@?#'\"]*:)(?P<secret>[^\s@/'\"]+)(?=@)")
_QUERY = re.compile(r"(?P<head>[?&;](?:password|passwd|pwd|token|secret)=)(?P<secret>[^&\s'\"#]+)", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """``text`` with every password inside a URI replaced by ``***`` (URIs anywhere in the text)."""
    if not text:
        return text
    text = _USERINFO.sub(lambda m: m.group("head") + MASK, text)
    return _QUERY.sub(lambda m: m.group("head") + MASK, text)


def has_secret(uri: str | None) -> bool:
    """True when ``uri`` holds a password that :func:`mask_secrets` would hide."""
    return bool(uri) and mask_secrets(uri) != uri


_REAL: dict[str, str] = {}  # masked URI -> the URI the user gave, in this process only


def remember(uri: str) -> str:
    """Note ``uri`` (given by the user in this process) so that :func:`unmask` can give it back for its
    masked form; returns the masked form. What is pickled into files (Tune's saved callbacks) holds only
    the masked form, and the driver that restores them knows the real one again (the user gave it)."""
    masked = mask_secrets(uri)
    if masked != uri:
        _REAL[masked] = uri
    return masked


def unmask(uri: str) -> str:
    """The real URI behind a masked one this process was given (:func:`remember`); else ``uri``."""
    return _REAL.get(uri, uri)
