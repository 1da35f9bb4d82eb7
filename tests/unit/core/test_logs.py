"""The logging setup renders tracebacks for `log.exception`, in both formats."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from app.core.logs import configure_logging, get_logger


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


@pytest.mark.parametrize("json_lines", [False, True])
def test_log_exception_renders_the_traceback(
    capsys: pytest.CaptureFixture[str], json_lines: bool
) -> None:
    configure_logging("INFO", json_lines=json_lines)
    try:
        raise RuntimeError("boom in the stage")
    except RuntimeError:
        get_logger(job_id="j1").exception("stage_crashed")
    text = capsys.readouterr().err
    assert "stage_crashed" in text
    assert "Traceback" in text
    assert "boom in the stage" in text


class _Recorder:
    """A stream that keeps each write() call apart, as the kernel sees them."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("json_lines", [False, True])
def test_each_line_is_one_write(monkeypatch: pytest.MonkeyPatch, json_lines: bool) -> None:
    # `dev`'s workers share one stderr (a file or a pipe): a line written in two calls
    # (text, then newline) interleaves with another process's line into garbage.
    stream = _Recorder()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging("INFO", json_lines=json_lines)
    get_logger(worker="render-0").info("worker_started", pid=1)
    get_logger(worker="upload-0").info("worker_started", pid=2)
    assert len(stream.writes) == 2
    assert all(w.endswith("\n") and w.count("\n") == 1 for w in stream.writes)
