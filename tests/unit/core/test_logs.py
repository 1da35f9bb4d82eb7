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
