"""`comfyui-saas workflow ...` and `comfyui-saas run` against a real uvicorn server."""

from __future__ import annotations

import json
from pathlib import Path

from app.adapters.comfy import catalog as node_catalog
from app.core.models import Stage
from tests.integration.cli.test_cli import Served, assert_failed, run, served
from tests.support import templates as fx

__all__ = ["served"]  # the fixture, shared with the job commands' tests


def files(tmp_path: Path) -> tuple[str, str]:
    graph, spec = tmp_path / "wf.json", tmp_path / "spec.json"
    graph.write_text(json.dumps(fx.graph()))
    spec.write_text(json.dumps({"inputs": fx.spec(), "description": "Portraits"}))
    return str(graph), str(spec)


def test_push_list_show_run_and_delete(served: Served, tmp_path: Path) -> None:
    harness, _ = served
    node_catalog.publish(
        harness.deps.backend.kv(node_catalog.CATALOG_DICT), fx.object_info(), harness.clock()
    )
    graph, spec = files(tmp_path)
    pushed = run("workflow", "push", graph, "--spec", spec, "--name", "portrait")
    assert pushed.exit_code == 0, pushed.output
    assert pushed.stdout.startswith("portrait@1  latest=1  inputs: prompt (string)")
    listed = run("workflow", "list")
    assert "portrait  1       1         Portraits" in listed.stdout, listed.stdout
    schema = json.loads(run("workflow", "show", "portrait@1", "--schema").stdout)
    assert schema["title"] == "portrait@1"
    # --set values are typed by the schema: "123" stays a string for a string input
    ran = run(
        "run", "portrait", "--set", "prompt=123", "--set", "seed=7", "--set", "flag=false",
        "--set", "cfg=4.5", "--input", "photo=https://cdn.example.com/p.png", "--json",
    )  # fmt: skip
    assert ran.exit_code == 0, ran.output
    view = json.loads(ran.stdout)
    assert view["template"]["inputs"] == {
        **view["template"]["inputs"], "prompt": "123", "seed": 7, "flag": False, "cfg": 4.5
    }  # fmt: skip
    assert harness.deps.queue(Stage.FETCH).len() == 1
    assert_failed(run("run", "portrait", "--set", "steps=many"), "--set steps='many'")
    assert_failed(run("run", "portrait", "--set", "colour=red"), "no such input")
    assert_failed(run("run", "portrait", "--input", "photo=./p.png"), "not a URL")
    assert_failed(
        run("run", "portrait", "--set", "steps=99", "--input", "photo=https://e.com/p.png",
            "--set", "prompt=x"),
        "input 'steps'", "invalid_input", "HTTP 400",
    )  # fmt: skip
    deleted = run("workflow", "delete", "portrait@1")
    assert deleted.stdout.strip() == "deleted portrait@1"
    assert_failed(run("run", "portrait@1"), "no workflow template", "HTTP 404")


def test_tenant_update_sets_templates_only(served: Served) -> None:
    harness, _ = served
    result = run("tenant", "update", "acme", "--templates-only")
    assert result.exit_code == 0, result.output
    assert "templates only" in result.stdout
    assert harness.deps.tenants.resolve("acme").templates_only
    run("tenant", "update", "acme", "--allow-raw-graphs")
    assert not harness.deps.tenants.resolve("acme").templates_only
