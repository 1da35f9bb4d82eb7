"""The Modal app as declared: read back from the installed SDK's own objects, offline.

`fn.info()` gives what Modal would be told about resources, schedules, retries and
concurrency; the autoscaler settings and snapshot flags are not in `info()`, so they are
read from the function definition the SDK built (the values its deploy step would send).
"""

from __future__ import annotations

import inspect
import itertools
import json
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import pytest

from app.core.config import Settings
from app.core.errors import ComfyUnavailable
from app.core.models import Stage, StageMessage
from app.deploy.modal import app as modal_app
from app.deploy.modal import options as opts
from app.deploy.modal.manifest import MANIFEST, MODELS_DIR, node_set_version
from app.engine.deps import Deps
from app.engine.pipeline import enqueue
from app.store.backends.modal import ModalBackend
from app.store.keys import DELAYED_DICT
from tests.modal_emulator.functions import next_cron_time
from tests.modal_fake import FakeModal
from tests.paths import REPO_ROOT
from tests.state_helpers import FakeClock

ROOT = REPO_ROOT
#: What the app was built from (the defaults, unless the shell running pytest overrides them;
#: the clean-environment subprocess tests below pin the defaults themselves).
DEFAULTS = modal_app.settings


def _registered() -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated in 1.6, still the public listing
        return dict(modal_app.app.registered_functions)


def _definition(fn: Any) -> dict[str, Any]:
    """The values the SDK captured for this function's deploy request."""
    impl = synchronizer_in(fn)
    return dict(inspect.getclosurevars(impl._load).nonlocals)


def _secret_spec(secret: Any) -> tuple[str, list[str]]:
    found = inspect.getclosurevars(synchronizer_in(secret)._load).nonlocals
    return found["name"], list(found["required_keys"])


CPU_STAGE_FUNCTIONS = ["intake", "fetch", "upload", "notify"]
SCHEDULED = ["sweep", "fail_stale", "cleanup", "refresh_durable", "verify_setup"]


def test_import_needs_no_modal_credentials_or_gpu_libraries(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODAL_", "COMFYUI_SAAS_"))}
    env["HOME"] = str(tmp_path)  # no ~/.modal.toml either
    code = """
import inspect, json, sys, warnings
warnings.simplefilter("ignore")
import app.deploy.modal.app as m
from modal._utils.async_utils import synchronizer
heavy_modules = ("torch", "huggingface_hub", "app.engine.worker", "app.api.ingress")
heavy = [n for n in heavy_modules if n in sys.modules]
fn = m.app.registered_functions["Render.*"]
nl = inspect.getclosurevars(synchronizer._translate_in(fn)._load).nonlocals
a = nl["autoscaler_settings"]
print(json.dumps({"name": m.app.name, "heavy": heavy, "snap": nl["enable_memory_snapshot"],
    "opts": nl["experimental_options"], "gpus": fn.info().gpus,
    "render": [a.min_containers, a.max_containers, a.buffer_containers, a.scaledown_window]}))
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # The shipped defaults: snapshots on, GPU snapshots opt-in, one L4 at most, none idle.
    assert json.loads(done.stdout) == {
        "name": "comfyui-saas",
        "heavy": [],
        "snap": True,
        "opts": {},
        "gpus": [["L4", 1]],
        "render": [0, 1, 0, 60],
    }


def test_every_function_and_class_is_declared() -> None:
    names = set(_registered())
    expected = {*CPU_STAGE_FUNCTIONS, *SCHEDULED, "download_models", "api", "Render.*"}
    assert names == expected
    assert modal_app.app.name == DEFAULTS.modal_app_name
    assert _registered()["Render.*"].info().method_names == ["run"]


@pytest.mark.parametrize("name", CPU_STAGE_FUNCTIONS)
def test_cpu_stages_are_cheap_concurrent_and_scale_to_zero(name: str) -> None:
    fn = _registered()[name]
    info = fn.info()
    assert info.gpus == []
    assert info.concurrency_info is not None
    assert info.concurrency_info.max_inputs == DEFAULTS.modal_cpu_max_inputs
    assert info.timeout == DEFAULTS.modal_cpu_timeout_s
    assert info.max_retries == DEFAULTS.modal_cpu_retries
    assert info.schedule is None
    scaling = _definition(fn)["autoscaler_settings"]
    assert scaling.min_containers == 0
    assert scaling.max_containers == DEFAULTS.modal_cpu_max_containers
    assert scaling.buffer_containers == 0
    assert scaling.scaledown_window == DEFAULTS.modal_cpu_scaledown_window_s


def test_render_is_a_gpu_class_with_snapshots_and_one_job_per_container() -> None:
    fn = _registered()["Render.*"]
    info = fn.info()
    definition = _definition(fn)
    assert info.gpus == [(DEFAULTS.modal_gpu, 1)]
    assert info.concurrency_info is not None and info.concurrency_info.max_inputs == 1
    assert info.timeout == DEFAULTS.modal_render_timeout_s
    assert info.startup_timeout == DEFAULTS.modal_render_startup_timeout_s
    assert info.max_retries == DEFAULTS.modal_render_retries
    assert definition["enable_memory_snapshot"] is DEFAULTS.modal_memory_snapshot
    gpu_snapshot = DEFAULTS.modal_memory_snapshot and DEFAULTS.modal_gpu_snapshot
    assert definition["experimental_options"] == (
        {"enable_gpu_snapshot": "True"} if gpu_snapshot else {}
    )
    scaling = definition["autoscaler_settings"]
    assert (scaling.min_containers, scaling.max_containers, scaling.buffer_containers) == (
        DEFAULTS.modal_render_min_containers,
        DEFAULTS.modal_render_max_containers,
        DEFAULTS.modal_render_buffer_containers,
    )
    assert scaling.scaledown_window == DEFAULTS.modal_render_scaledown_window_s
    volume = info.volumes[MODELS_DIR]
    assert (volume.name, volume.read_only) == (f"{DEFAULTS.modal_app_name}-models", True)


def test_render_enter_hooks_split_around_the_snapshot() -> None:
    from modal._partial_function import _find_partial_methods_for_user_cls, _PartialFunctionFlags

    # @app.cls makes Render a modal.Cls at run time; mypy sees the decorated class.
    user_cls = modal_app.Render._get_user_cls()  # type: ignore[attr-defined]
    pre = _find_partial_methods_for_user_cls(user_cls, _PartialFunctionFlags.ENTER_PRE_SNAPSHOT)
    post = _find_partial_methods_for_user_cls(user_cls, _PartialFunctionFlags.ENTER_POST_SNAPSHOT)
    exits = _find_partial_methods_for_user_cls(user_cls, _PartialFunctionFlags.EXIT)
    assert list(pre) == ["start_comfy"]
    assert list(post) == ["attach"]
    assert list(exits) == ["stop_comfy"]


def test_schedules() -> None:
    fns = _registered()
    assert fns["sweep"].info().schedule == "Cron('* * * * *', UTC)"
    assert fns["fail_stale"].info().schedule == (
        f"Period(seconds={float(DEFAULTS.modal_fail_stale_every_s)})"
    )
    assert fns["cleanup"].info().schedule == f"Cron('{DEFAULTS.modal_cleanup_cron}', UTC)"
    assert fns["refresh_durable"].info().schedule == (
        f"Period(seconds={float(DEFAULTS.modal_durable_refresh_every_s)})"
    )
    assert fns["verify_setup"].info().schedule == f"Cron('{DEFAULTS.modal_verify_setup_cron}', UTC)"
    for name in [*CPU_STAGE_FUNCTIONS, "api", "download_models", "Render.*"]:
        assert fns[name].info().schedule is None, name


def test_cleanup_runs_hourly_and_an_hours_runs_outpace_production() -> None:
    # A day's ended jobs at 2,000 daily users (x 5 jobs) do not fit one run's timeout;
    # hourly runs of at most `cleanup_max_jobs_per_run` each must purge more than that.
    fires = [0.0]
    for _ in range(49):
        fires.append(next_cron_time(DEFAULTS.modal_cleanup_cron, fires[-1]))
    assert {later - earlier for earlier, later in itertools.pairwise(fires[1:])} == {3600.0}
    assert 24 * DEFAULTS.cleanup_max_jobs_per_run > 2000 * 5


def test_nothing_is_always_on() -> None:
    if DEFAULTS.modal_render_min_containers or DEFAULTS.modal_render_buffer_containers:
        pytest.skip("the shell running the tests asks for warm render containers")
    for name, fn in _registered().items():
        scaling = _definition(fn)["autoscaler_settings"]
        assert scaling.min_containers == 0, name
        assert scaling.buffer_containers == 0, name


def test_ingress_is_an_asgi_app_without_retries() -> None:
    fn = _registered()["api"]
    info = fn.info()
    assert info.web_info is not None
    assert info.web_info.unauthenticated is (not DEFAULTS.modal_requires_proxy_auth)
    assert info.max_retries is None
    assert info.concurrency_info is not None
    assert info.concurrency_info.max_inputs == DEFAULTS.modal_ingress_max_inputs
    assert _definition(fn)["autoscaler_settings"].max_containers == (
        DEFAULTS.modal_ingress_max_containers
    )


def test_secrets_are_named_with_required_keys_and_carry_no_values() -> None:
    fns = _registered()
    for name in [*CPU_STAGE_FUNCTIONS, "sweep", "fail_stale", "cleanup", "api", "Render.*"]:
        secrets = _definition(fns[name])["secrets"]
        named = [_secret_spec(s) for s in secrets if "from_name" in repr(s)]
        assert named == [
            (
                DEFAULTS.modal_storage_secret,
                [
                    "COMFYUI_SAAS_S3_ENDPOINT_URL",
                    "COMFYUI_SAAS_S3_ACCESS_KEY_ID",
                    "COMFYUI_SAAS_S3_SECRET_ACCESS_KEY",
                ],
            ),
            (DEFAULTS.modal_signing_secret, ["COMFYUI_SAAS_SIGNING_KEY"]),
        ], name
        from_dict = [repr(s) for s in secrets if "from_dict" in repr(s)]
        assert len(from_dict) == 1
        for key in ("SIGNING_KEY", "SECRET_ACCESS_KEY", "ACCESS_KEY_ID", "API_KEY", "ENDPOINT_URL"):
            assert f"COMFYUI_SAAS_{key}," not in from_dict[0] + ","
    for name in ("verify_setup", "download_models"):  # settings only; no HF secret by default
        secrets = _definition(fns[name])["secrets"]
        assert len(secrets) == 1, name
        assert "from_dict" in repr(secrets[0]), name


def _image_layers(image: Any) -> tuple[list[str], list[Any]]:
    """Dockerfile commands and mounted local files of an image and all its bases."""
    commands: list[str] = []
    mounts: list[Any] = []
    seen: set[int] = set()

    def walk(img: Any) -> None:
        impl = synchronizer_in(img)
        if id(impl) in seen:
            return
        seen.add(id(impl))
        found = inspect.getclosurevars(impl._load).nonlocals
        bases = list(found.get("base_images", {}).values())
        if "base_image" in found:  # a mount layer on top of its base
            bases.append(found["base_image"])
            mounts.extend(found["mount"]._entries)
        for base in bases:
            walk(base)
        build = found.get("dockerfile_function")
        if build is not None:
            commands.extend(build("2025.06").commands)

    walk(image)
    return commands, mounts


def test_render_image_pins_comfyui_torch_and_installs_the_snapshot_helper() -> None:
    commands, mounts = _image_layers(modal_app.render_image)
    text = "\n".join(commands)
    assert f"fetch -q --depth 1 origin {MANIFEST.comfyui.commit}" in text
    assert (
        f'test "$(git -C /root/comfy/ComfyUI rev-parse HEAD)" = "{MANIFEST.comfyui.commit}"' in text
    )
    for package in MANIFEST.torch:
        assert package.requirement in text
    assert "modal==1.6.4" in text  # the project's own dependencies, from pyproject.toml
    helper = [m for m in mounts if getattr(m, "local_dir", None) == ROOT / "snapshot_helper"]
    assert [str(m.remote_path) for m in helper] == [
        "/root/comfy/ComfyUI/custom_nodes/snapshot_helper"
    ]
    assert any(getattr(m, "module_name", None) == "app" for m in mounts)
    assert _definition(_registered()["Render.*"])["image"] is synchronizer_in(
        modal_app.render_image
    )


def synchronizer_in(obj: Any) -> Any:
    """The SDK's implementation object behind a public Modal object."""
    from modal._utils.async_utils import synchronizer

    return synchronizer._translate_in(obj)  # type: ignore[no-untyped-call]  # synchronicity is untyped


def test_cpu_image_has_the_pinned_downloader_and_no_torch() -> None:
    commands, mounts = _image_layers(modal_app.cpu_image)
    text = "\n".join(commands)
    assert MANIFEST.downloader.requirement in text
    assert "torch" not in text
    assert [getattr(m, "module_name", None) for m in mounts] == ["app"]


def test_gpu_snapshot_option_reaches_the_sdk(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODAL_", "COMFYUI_SAAS_"))}
    env.update(
        HOME=str(tmp_path),
        COMFYUI_SAAS_MODAL_GPU_SNAPSHOT="true",
        COMFYUI_SAAS_MODAL_GPU="L40S",
        COMFYUI_SAAS_MODAL_RENDER_MAX_CONTAINERS="4",
    )
    code = """
import inspect, json, warnings
warnings.simplefilter("ignore")
import app.deploy.modal.app as m
from modal._utils.async_utils import synchronizer
fn = m.app.registered_functions["Render.*"]
nl = inspect.getclosurevars(synchronizer._translate_in(fn)._load).nonlocals
print(json.dumps({"snap": nl["enable_memory_snapshot"], "opts": nl["experimental_options"],
    "gpus": fn.info().gpus, "max": nl["autoscaler_settings"].max_containers}))
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {  # and snapshots are on by default, GPU ones opt-in
        "snap": True,
        "opts": {"enable_gpu_snapshot": "True"},
        "gpus": [["L40S", 1]],
        "max": 4,
    }


# ---- the bodies, run locally with fakes for the pipeline interfaces -------------------


@pytest.fixture
def modal_deps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Deps:
    """Deps on the Modal backend over the SDK-checked fake; the app's bodies use them."""
    fake = FakeModal()
    backend = ModalBackend(
        "test", "dev", queue_factory=fake.queue_from_name, dict_factory=fake.dict_from_name
    )
    deps = Deps(settings=Settings(data_dir=tmp_path / "data"), backend=backend, clock=FakeClock())
    monkeypatch.setattr(modal_app, "container_deps", lambda comfy_url=None: deps)
    return deps


def test_sweep_wakes_consumers_for_waiting_messages(modal_deps: Deps) -> None:
    # Given: messages wait on fetch (3) and render (2), and no wake-up reached them
    for stage, count in ((Stage.FETCH, 3), (Stage.RENDER, 2)):
        for n in range(count):
            modal_deps.queue(stage).put(f"m{n}")
    woken: list[Stage] = []
    modal_deps.waker = woken.append
    # When: the minutely sweep runs
    report = modal_app.sweep.local()
    # Then: one drainer for fetch, one render call per message up to the render capacity
    assert woken == [Stage.FETCH, Stage.RENDER]
    assert (report["fetch"], report["render"], report["woken"]) == (3, 2, 2)


def test_sweep_moves_a_due_parked_retry_back_to_its_queue(modal_deps: Deps) -> None:
    # Given: a render retry parked in the `delayed` modal.Dict until 5 s from now
    clock: FakeClock = modal_deps.clock  # type: ignore[assignment]
    enqueue(modal_deps, "j1", Stage.RENDER, attempt=1, not_before=clock.now + 5)
    assert modal_deps.queue(Stage.RENDER).len() == 0
    modal_app.sweep.local()
    assert modal_deps.queue(Stage.RENDER).len() == 0  # not due yet: still parked
    # When: its time has come and the Modal sweep runs
    clock.advance(5)
    woken: list[Stage] = []
    modal_deps.waker = woken.append
    report = modal_app.sweep.local()
    # Then: the retry is back on the render queue (once), and render was woken for it
    assert list(modal_deps.backend.kv(DELAYED_DICT).keys()) == []
    raw = modal_deps.queue(Stage.RENDER).get()
    assert raw is not None and StageMessage.model_validate_json(raw).attempt == 1
    assert Stage.RENDER in woken
    assert report["released"] == 1
    assert modal_app.sweep.local()["released"] == 0


def test_a_full_drain_hands_over_to_a_fresh_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Stage, int]] = []
    limit = DEFAULTS.modal_drain_max_items

    def drain_stage(stage: Stage, deps: object, *, max_items: int, **_: object) -> int:
        calls.append((stage, max_items))
        return max_items if len(calls) == 1 else 3

    fake_worker = types.SimpleNamespace(drain=drain_stage)
    woken: list[Stage] = []
    monkeypatch.setattr(modal_app, "_interface", lambda name: fake_worker)
    monkeypatch.setattr(modal_app, "container_deps", lambda comfy_url=None: object())
    monkeypatch.setattr(modal_app, "wake", woken.append)
    assert modal_app.fetch.local() == limit
    assert woken == [Stage.FETCH]
    assert modal_app.upload.local() == 3
    assert woken == [Stage.FETCH]
    assert calls == [(Stage.FETCH, limit), (Stage.UPLOAD, limit)]


def test_a_drain_stops_taking_messages_before_the_function_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    taken: list[float] = []

    def drain_stage(stage: Stage, deps: object, *, keep_going: Any, **_: object) -> int:
        while keep_going():
            taken.append(now[0] - 1000.0)
            now[0] += 100.0  # each message takes 100 s
        return len(taken)

    woken: list[Stage] = []
    monkeypatch.setattr(
        modal_app, "_interface", lambda name: types.SimpleNamespace(drain=drain_stage)
    )
    monkeypatch.setattr(modal_app, "container_deps", lambda comfy_url=None: object())
    monkeypatch.setattr(modal_app, "wake", woken.append)
    monkeypatch.setattr(modal_app, "monotonic", lambda: now[0])
    modal_app.fetch.local()
    # timeout 600 s, worst case 120 s per message: none is taken at or after 480 s.
    assert DEFAULTS.modal_cpu_timeout_s == 600
    assert DEFAULTS.modal_drain_message_budget_s == 120
    assert taken == [0.0, 100.0, 200.0, 300.0, 400.0]
    assert woken == [Stage.FETCH]  # a fresh call takes the rest


def test_wake_failure_is_only_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def spawn(self) -> None:
            raise RuntimeError("no app running")

    monkeypatch.setattr(modal_app, "_consumer", lambda stage: Broken())
    modal_app.wake(Stage.NOTIFY)  # must not raise


def _render_instance(healthy: bool) -> Any:
    # @app.cls makes Render a modal.Cls at run time; mypy sees the decorated class.
    user_cls = modal_app.Render._get_user_cls()  # type: ignore[attr-defined]
    obj = user_cls()
    obj.comfy = types.SimpleNamespace(
        launch=types.SimpleNamespace(url="http://127.0.0.1:9"), alive=lambda: healthy
    )
    obj.deps = object()
    return obj


def test_render_runs_one_job_per_call_after_a_health_check(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def drain_stage(stage: Stage, deps: object, **kwargs: Any) -> int:
        seen.update(kwargs, stage=stage)
        kwargs["before_each"]()
        return 1

    monkeypatch.setattr(
        modal_app, "_interface", lambda name: types.SimpleNamespace(drain=drain_stage)
    )
    monkeypatch.setattr("app.deploy.modal.comfy_process.is_healthy", lambda url, **_: True)
    assert _render_instance(healthy=True).run() == 1
    assert seen["stage"] is Stage.RENDER and seen["max_items"] == 1


def test_unhealthy_comfy_stops_the_container_and_raises_transient(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stopped: list[bool] = []

    def stop_fetching_inputs() -> bool:
        stopped.append(True)
        return True

    monkeypatch.setattr("app.deploy.modal.comfy_process.is_healthy", lambda url, **_: False)
    monkeypatch.setattr("app.deploy.modal.hooks.stop_fetching_inputs", stop_fetching_inputs)
    with pytest.raises(ComfyUnavailable):
        _render_instance(healthy=False).health_gate()
    assert stopped == [True]


def test_catalog_is_published_through_the_catalog_module(monkeypatch: pytest.MonkeyPatch) -> None:
    published: list[tuple[Any, Any, str]] = []
    catalog = types.SimpleNamespace(
        CATALOG_DICT="nodes",
        publish=lambda kv, info, now, version: published.append((kv, info, version)),
    )
    deps = types.SimpleNamespace(kv=lambda name: f"kv:{name}")
    monkeypatch.setattr(modal_app, "_interface", lambda name: catalog)
    modal_app._publish_catalog(deps, {"SaveImage": {}})
    # Published under the deploy's node set, so intake trusts it however old it gets.
    version = node_set_version(MANIFEST)
    assert published == [("kv:nodes", {"SaveImage": {}}, version)]
    monkeypatch.setattr(modal_app, "_interface", lambda name: (_ for _ in ()).throw(ImportError()))
    modal_app._publish_catalog(deps, {})  # a missing catalog module is logged, not fatal


def test_stages_share_the_scratch_volume_at_the_data_dir() -> None:
    # Inputs fetched in a CPU container are rendered in a GPU container, and the outputs
    # uploaded from another: all three must mount the same Volume where work_dir points.
    for fn in (modal_app.fetch, modal_app.upload):
        volume = fn.info().volumes[modal_app.SCRATCH_DIR]
        assert (volume.name, volume.read_only) == (f"{DEFAULTS.modal_app_name}-scratch", False)
    render_volume = modal_app.Render().run.info().volumes[modal_app.SCRATCH_DIR]
    assert render_volume.name == f"{DEFAULTS.modal_app_name}-scratch"
    env = opts.container_env(DEFAULTS, "cpu")
    assert env["COMFYUI_SAAS_DATA_DIR"] == modal_app.SCRATCH_DIR


def test_by_default_a_dead_holder_is_taken_back_within_a_minute_on_modal() -> None:
    # The lease runs out, then the next fail_stale takes the job back; what is left of
    # the minute is for the woken consumer to start the stage again.
    assert fns_schedule_seconds("fail_stale") == DEFAULTS.modal_fail_stale_every_s
    assert DEFAULTS.stage_lease_s + DEFAULTS.modal_fail_stale_every_s <= 45
    # A delivery lost with a notify worker mid-POST: re-sent within the minute.
    in_hand_s = DEFAULTS.webhook_timeout_s + DEFAULTS.stage_lease_s
    assert in_hand_s + DEFAULTS.modal_fail_stale_every_s <= 60


def fns_schedule_seconds(name: str) -> float:
    schedule = str(_registered()[name].info().schedule)
    assert schedule.startswith("Period(seconds="), schedule
    return float(schedule.removeprefix("Period(seconds=").removesuffix(")"))
