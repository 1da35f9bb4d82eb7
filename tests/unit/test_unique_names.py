"""Each public class or function name of app/ is defined in one module only."""

from __future__ import annotations

import ast
from collections import defaultdict

from tests.paths import REPO_ROOT

APP = REPO_ROOT / "app"
#: Entry points are named for what they run: `comfyui-saas cleanup` and the Modal function
#: `cleanup` both call `app.engine.maintenance.cleanup`, and these names are the public
#: command and function names, so they repeat the engine's on purpose.
ENTRY_POINTS = {APP / "cli" / "main.py", APP / "deploy" / "modal" / "app.py"}
#: Every work stage is `run(job, deps)`: one shape, one name.
STAGE_SHAPE = "run"


def test_public_names_are_unique_in_app() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for path in sorted(APP.rglob("*.py")):
        if path in ENTRY_POINTS:
            continue
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if node.name.startswith("_"):
                continue
            if node.name == STAGE_SHAPE and path.parent == APP / "stages":
                continue
            where[node.name].append(str(path.relative_to(REPO_ROOT)))
    assert {name: paths for name, paths in where.items() if len(paths) > 1} == {}
