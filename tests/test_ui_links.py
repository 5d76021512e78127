"""The MLflow UI address and hint bib-ray prints: model-training runs table, on the right host.

Whether the address really opens that table in MLflow's UI is checked in a browser by the slow
tests/test_mlflow_ui_browser.py; these tests pin its parts and where it points.
"""

from __future__ import annotations

import shlex
from urllib.parse import parse_qs, urlsplit

import pytest

from bib_ray.tracking.ui_links import free_port, runs_table_url, ui_hint


def fragment_parts(url: str) -> tuple[str, str, dict[str, list[str]]]:
    """(address before '#', route inside the fragment, its query parameters)."""
    base, _, fragment = url.partition("#")
    route, _, query = fragment.partition("?")
    return base, route, parse_qs(query)


@pytest.mark.parametrize("uri", ["sqlite:////tmp/store/mlruns.db", "/tmp/store/mlruns", "file:///tmp/store/mlruns"])
def test_local_store_url_is_on_the_local_ui(uri):
    base, route, query = fragment_parts(runs_table_url(uri, "17"))
    assert base == "http://127.0.0.1:5000/"
    assert route == "/experiments/17/runs"
    assert query["workflowType"] == ["machine_learning"]
    assert query["orderByKey"] == ["tags.`mlflow.runName`"] and query["orderByAsc"] == ["true"]


def test_local_store_url_takes_another_ui_address():
    base, route, _ = fragment_parts(runs_table_url("sqlite:////tmp/m.db", "4", ui_address="http://127.0.0.1:5123/"))
    assert base == "http://127.0.0.1:5123/" and route == "/experiments/4/runs"


@pytest.mark.parametrize("uri", ["http://10.0.0.5:5000", "http://10.0.0.5:5000/", "HTTPS://mlflow.lab.org/"])
def test_server_url_is_on_the_server(uri):
    url = runs_table_url(uri, "3", ui_address="http://127.0.0.1:9999")
    base, route, query = fragment_parts(url)
    assert base == uri.rstrip("/") + "/"
    assert "//#" not in url and "9999" not in url
    assert route == "/experiments/3/runs" and query["workflowType"] == ["machine_learning"]


def test_local_hint_is_the_ui_command_then_the_url():
    uri = "sqlite:////tmp/my store/mlruns.db"
    port = free_port()
    lines = ui_hint(uri, "2").splitlines()
    assert len(lines) == 2
    command = shlex.split(lines[0].split(": ", 1)[1])
    assert command == ["mlflow", "ui", "--backend-store-uri", uri, "--port", str(port)]
    assert lines[1].endswith(runs_table_url(uri, "2", ui_address=f"http://127.0.0.1:{port}"))
    assert f"http://127.0.0.1:{port}/" in lines[1]


def test_local_hint_never_names_a_port_in_use():
    """A socket listening on the port the hint would name (5000, or the first free one from there):
    the hint moves on to a port that is free, and says it in the command and the address alike."""
    import socket

    taken = free_port()
    with socket.socket() as server:
        server.bind(("127.0.0.1", taken))
        server.listen()
        hint = ui_hint("sqlite:///mlruns.db", "4")
        port = int(hint.split("--port ")[1].split()[0])
        assert port != taken and port > taken
        assert f"http://127.0.0.1:{port}/#/experiments/4/runs?" in hint
        with socket.socket() as probe:  # the named port really is free
            probe.bind(("127.0.0.1", port))


def test_server_hint_is_one_line_with_the_server_url():
    hint = ui_hint("http://10.0.0.5:5000/", "8")
    assert "\n" not in hint and "mlflow ui" not in hint
    assert hint.endswith(runs_table_url("http://10.0.0.5:5000", "8"))
    assert "http://10.0.0.5:5000/#/experiments/8/runs?" in hint
