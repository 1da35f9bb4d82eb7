"""The Modal calls stages make: harmless outside a container, cancel goes to Modal."""

from __future__ import annotations

from typing import Any

import modal
import pytest

from app.deploy.modal import hooks as modal_hooks


def test_outside_modal_there_is_no_call_id_and_nothing_to_stop() -> None:
    assert modal.is_local()
    assert modal_hooks.current_call_id() is None
    assert modal_hooks.stop_fetching_inputs() is False


def test_cancel_render_call_cancels_that_function_call(monkeypatch: pytest.MonkeyPatch) -> None:
    cancelled: list[str] = []

    class FakeCall:
        def __init__(self, call_id: str) -> None:
            self.call_id = call_id

        def cancel(self, terminate_containers: bool = False) -> None:
            cancelled.append(self.call_id)

    monkeypatch.setattr(modal.FunctionCall, "from_id", staticmethod(FakeCall))
    assert modal_hooks.cancel_render_call("fc-123") is True
    assert cancelled == ["fc-123"]


def test_a_failed_cancel_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(call_id: str) -> Any:
        raise modal.exception.NotFoundError("no such call")

    monkeypatch.setattr(modal.FunctionCall, "from_id", staticmethod(refuse))
    assert modal_hooks.cancel_render_call("fc-gone") is False


def test_inside_a_container_the_call_id_comes_from_modal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modal, "is_local", lambda: False)
    monkeypatch.setattr(modal, "current_function_call_id", lambda: "fc-456")
    assert modal_hooks.current_call_id() == "fc-456"
