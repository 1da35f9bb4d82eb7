"""`install()` routes the real SDK entry points of our Modal app to the emulator."""

from __future__ import annotations

import warnings
from typing import Any

import modal

from tests.modal_emulator import ModalEmulator, function_key

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    # Imported before any install(): the app's decorators need real modal.Volume objects.
    from app.deploy.modal import app as modal_app


def _app() -> Any:
    return modal_app


def test_real_function_spawn_runs_the_registered_emulated_function(manual: ModalEmulator) -> None:
    """_functions.py:2258 `Function.spawn`: our `wake()` spawns the stage's consumer."""
    from app.core.models import Stage

    m = _app()
    woke: list[str] = []
    manual.function("fetch", lambda: woke.append("fetch"), max_inputs=8)
    manual.function("Render.run", lambda: woke.append("render"))
    m.wake(Stage.FETCH)
    m.wake(Stage.RENDER)
    assert manual.functions["fetch"].get_current_stats().backlog == 1
    manual.run_until_idle()
    assert sorted(woke) == ["fetch", "render"]
    assert function_key(m.Render().run) == "Render.run"


def test_cancel_by_call_id_reaches_the_emulated_call(manual: ModalEmulator) -> None:
    """_functions.py:2539 `FunctionCall.from_id(...).cancel()`, as our hooks call it."""
    from app.deploy.modal.hooks import cancel_render_call

    fn = manual.function("Render.run", lambda: None)
    call = fn.spawn()
    assert cancel_render_call(call.object_id) is True
    assert call.status == "cancelled"
    assert cancel_render_call("fc-unknown") is False  # NotFoundError, logged


def test_volume_from_name_is_emulated(manual: ModalEmulator) -> None:
    """volume.py:709 `Volume.from_name` binds to the SDK signature and is lazy."""
    vol = modal.Volume.from_name("v", environment_name="dev", create_if_missing=True)
    assert vol.read_only().name == "v"
    assert ("dev", "v") not in manual.volumes  # lazy: nothing created until used
    assert vol.object_id.startswith("vo-emu")
    assert ("dev", "v") in manual.volumes


def test_the_apps_module_level_volume_commits_into_the_container_view(
    manual: ModalEmulator,
) -> None:
    """volume.py:889: `scratch_volume.commit()` (a handle made at import, before install)
    publishes the current container's writes; mounts may be the app's own handles."""
    m = _app()

    def body() -> None:
        from tests.modal_emulator.context import current_input

        ctx = current_input()
        assert ctx is not None
        ctx.container.path(f"{m.SCRATCH_DIR}/job/out.png").parent.mkdir(parents=True)
        ctx.container.path(f"{m.SCRATCH_DIR}/job/out.png").write_bytes(b"png")
        m.scratch_volume.commit()

    manual.function("upload", body, volumes={m.SCRATCH_DIR: m.scratch_volume})
    manual.functions["upload"].spawn()
    manual.run_until_idle()
    assert manual.volumes[(None, "comfyui-saas-scratch")].files == {"job/out.png": b"png"}
