"""Pure helpers of the command line and the HTTP client: request bodies, progress, names."""

from __future__ import annotations

import io

import pytest
import structlog
import typer

from app.cli.main import ProgressPrinter, progress_line, request_body
from app.clients.http_client import local_name
from app.core.config import get_settings
from app.core.models import JobStatus, Stage
from app.core.schemas import JobView, Timings

GRAPH = {"1": {"class_type": "SaveImage", "inputs": {}}}


def view(**overrides: object) -> JobView:
    values: dict[str, object] = {
        "id": "job_1",
        "status": JobStatus.QUEUED,
        "stage": Stage.FETCH,
        "progress": 0.0,
        "created_at": 0.0,
        "timings": Timings(),
    }
    values.update(overrides)
    return JobView.model_validate(values)


def test_request_body_wraps_a_bare_graph_and_adds_flags() -> None:
    body = request_body(GRAPH, ["a.png=https://e.com/a.png"], "https://hooks.e.com/x")
    assert body == {
        "workflow": GRAPH,
        "inputs": [{"name": "a.png", "url": "https://e.com/a.png"}],
        "webhook_url": "https://hooks.e.com/x",
    }


def test_request_body_keeps_a_whole_request_and_appends_inputs() -> None:
    document = {
        "workflow": GRAPH,
        "inputs": [{"name": "b.png", "url": "https://e.com/b"}],
        "metadata": {"k": 1},
    }
    body = request_body(document, ["a.png=https://e.com/a?x=1=2"], None)
    assert body["metadata"] == {"k": 1}
    assert [i["name"] for i in body["inputs"]] == ["b.png", "a.png"]
    assert body["inputs"][1]["url"] == "https://e.com/a?x=1=2"


@pytest.mark.parametrize("spec", ["noequals", "=https://e.com", "name="])
def test_bad_input_specs_exit(spec: str) -> None:
    with pytest.raises(typer.Exit):
        request_body(GRAPH, [spec], None)


def test_progress_line_names_the_running_node() -> None:
    detail = {
        "node_id": "7",
        "node_type": "KSampler",
        "value": 5.0,
        "max": 20.0,
        "nodes_done": 2,
        "nodes_total": 4,
    }
    running = view(
        status=JobStatus.RUNNING, stage=Stage.RENDER, progress=0.25, progress_detail=detail
    )
    assert progress_line(running) == (
        "job_1  running  render  25%  node 7 (KSampler) 5/20 [2/4 nodes]"
    )
    no_steps = view(
        status=JobStatus.RUNNING,
        stage=Stage.RENDER,
        progress_detail={
            "node_id": "2",
            "node_type": "ImageInvert",
            "value": 0,
            "max": 1,
            "nodes_done": 1,
            "nodes_total": 3,
        },
    )
    assert progress_line(no_steps).endswith("node 2 (ImageInvert) [1/3 nodes]")
    assert progress_line(view()) == "job_1  queued  fetch  0%"
    ended = view(status=JobStatus.COMPLETED, progress_detail={"node_id": "2"})
    assert "node" not in progress_line(ended)


def test_progress_printer_prints_changes_only() -> None:
    out = io.StringIO()
    printer = ProgressPrinter(out)
    for v in (view(), view(), view(status=JobStatus.RUNNING, stage=Stage.RENDER), view()):
        printer(v)
    assert out.getvalue().count("\n") == 3


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("out.png", "out.png"),
        ("../../etc/passwd", "passwd"),
        ("a\\b\\c.png", "c.png"),
        (".hidden", "hidden"),
        ("we ird?.png", "we_ird_.png"),
        ("", "output-3"),
    ],
)
def test_local_names_are_safe(name: str, expected: str) -> None:
    assert local_name(name, 3, set()) == expected


def test_local_names_do_not_collide() -> None:
    assert local_name("out.png", 1, {"out.png"}) == "01-out.png"


def test_main_turns_a_bug_into_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import app.cli.tenants
    from app.cli.main import main

    def broken() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(app.cli.tenants, "local_deps", broken)
    monkeypatch.setattr("sys.argv", ["comfyui-saas", "tenant", "list"])
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as exited:
            main()
    finally:
        get_settings.cache_clear()
        structlog.reset_defaults()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: unexpected RuntimeError: boom"
