"""Settings -> Modal options, container environments, the sweep plan, and .env.example."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr

from app.core.config import ENV_PREFIX, Settings, env_value
from app.deploy.modal import options as opts
from tests.paths import REPO_ROOT

ROOT = REPO_ROOT


def test_defaults_are_cost_safe() -> None:
    s = Settings()
    render = opts.render_scaling(s)
    assert (render.min_containers, render.buffer_containers) == (0, 0)
    assert render.max_containers <= 2
    assert render.scaledown_window_s <= 120
    assert render.max_inputs == 1
    for scaling in (opts.cpu_scaling(s), opts.ingress_scaling(s)):
        assert (scaling.min_containers, scaling.buffer_containers) == (0, 0)
        assert scaling.max_containers <= 4
    assert opts.ingress_scaling(s).retries == 0  # Modal refuses retries on web functions


def test_peak_profile_values_flow_through() -> None:
    s = Settings(
        modal_gpu="L40S",
        modal_render_max_containers=4,
        modal_render_buffer_containers=1,
        modal_render_scaledown_window_s=300,
        modal_render_max_inputs=2,
    )
    render = opts.render_scaling(s)
    assert (render.max_containers, render.buffer_containers) == (4, 1)
    assert (render.scaledown_window_s, render.max_inputs) == (300, 2)


def test_max_containers_never_below_min() -> None:
    s = Settings(modal_render_min_containers=3, modal_render_max_containers=1)
    assert opts.render_scaling(s).max_containers == 3


@pytest.mark.parametrize(
    "memory, gpu, options, mode",
    [
        (True, False, {}, "cpu_until_restore"),
        (True, True, {"enable_gpu_snapshot": True}, ""),
        (False, True, {}, ""),  # a GPU snapshot needs the memory snapshot
        (False, False, {}, ""),
    ],
)
def test_snapshot_flags(memory: bool, gpu: bool, options: dict[str, bool], mode: str) -> None:
    snap = opts.snapshot(Settings(modal_memory_snapshot=memory, modal_gpu_snapshot=gpu))
    assert snap.memory is memory
    assert snap.experimental_options == options
    assert snap.helper_mode == mode


def test_secrets_by_name_with_required_keys() -> None:
    s = Settings(modal_storage_secret="r2", modal_signing_secret="sig")
    assert opts.app_secrets(s) == [
        opts.SecretSpec(
            "r2",
            (
                "COMFYUI_SAAS_S3_ENDPOINT_URL",
                "COMFYUI_SAAS_S3_ACCESS_KEY_ID",
                "COMFYUI_SAAS_S3_SECRET_ACCESS_KEY",
            ),
        ),
        opts.SecretSpec("sig", ("COMFYUI_SAAS_SIGNING_KEY",)),
    ]
    assert opts.download_secrets(s) == []
    assert opts.download_secrets(Settings(modal_hf_secret="hf")) == [
        opts.SecretSpec("hf", ("HF_TOKEN",))
    ]


def test_container_env_carries_settings_but_never_secret_values() -> None:
    s = Settings(
        s3_access_key_id=SecretStr("AKIA-test"),
        s3_secret_access_key=SecretStr("shh"),
        signing_key=SecretStr("sign"),
        api_key=SecretStr("client-key"),
        s3_endpoint_url="https://acct.r2.example",
        max_active_jobs_per_user=7,
    )
    env = opts.container_env(s, "cpu")
    values = set(env.values())
    assert not values & {"AKIA-test", "shh", "sign", "client-key", "https://acct.r2.example"}
    for key in opts.STORAGE_KEYS + opts.SIGNING_KEYS + ("COMFYUI_SAAS_API_KEY",):
        assert key not in env
    assert env["COMFYUI_SAAS_MAX_ACTIVE_JOBS_PER_USER"] == "7"
    assert env["COMFYUI_SAAS_BACKEND"] == "modal"
    assert env["COMFYUI_SAAS_STORAGE"] == "s3"
    assert env["COMFYUI_SAAS_COMFYUI_BASE_DIR"] == ""
    assert opts.container_env(s, "render")["COMFYUI_SAAS_COMFYUI_BASE_DIR"] == (
        "/root/comfy/ComfyUI"
    )
    # What a container reads back is a valid Settings with the deployer's values.
    fields: dict[str, Any] = {k[len(ENV_PREFIX) :].lower(): v for k, v in env.items()}
    rebuilt = Settings(**fields)
    assert rebuilt.max_active_jobs_per_user == 7 and rebuilt.backend == "modal"


def test_env_example_lists_every_modal_knob_with_its_default() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    written = dict(line.split("=", 1) for line in lines if line.startswith(ENV_PREFIX))
    defaults = Settings.model_construct()
    modal_fields = [name for name in Settings.model_fields if name.startswith("modal_")]
    assert len(modal_fields) > 20
    for name in modal_fields:
        key = f"{ENV_PREFIX}{name.upper()}"
        assert written.get(key) == env_value(getattr(defaults, name)), key
    text = "\n".join(lines)
    assert "#   COMFYUI_SAAS_MODAL_GPU=L40S" in text  # the documented peak profile
