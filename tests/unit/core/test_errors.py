"""One error tree: every exception the service defines is a `ComfySaasError` from core."""

from __future__ import annotations

import ast
import inspect

from app.core import errors
from tests.paths import REPO_ROOT


def test_every_error_class_is_defined_in_core_errors() -> None:
    # Given: every module of app/ except the tree itself
    strays: list[str] = []
    for path in sorted((REPO_ROOT / "app").rglob("*.py")):
        if path == REPO_ROOT / "app" / "core" / "errors.py":
            continue
        tree = ast.parse(path.read_text())
        for node in tree.body:
            bases = {ast.unparse(b).rsplit(".", 1)[-1] for b in getattr(node, "bases", [])}
            if bases & {"Exception", "KeyError", "RuntimeError", "ValueError", "TimeoutError"}:
                strays.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    # Then: none defines its own exception root
    assert strays == []


def test_the_tree_has_one_root_and_the_docstring_draws_every_class() -> None:
    classes = [
        c
        for c in vars(errors).values()
        if inspect.isclass(c) and issubclass(c, BaseException) and c.__module__ == errors.__name__
    ]
    assert all(issubclass(c, errors.ComfySaasError) for c in classes)
    drawn = errors.__doc__ or ""
    assert [c.__name__ for c in classes if c.__name__ not in drawn] == []


def test_job_not_found_is_still_a_key_error() -> None:
    assert issubclass(errors.JobNotFound, KeyError)
    assert issubclass(errors.QueueItemTooLarge, ValueError)
    assert issubclass(errors.WaitTimeout, TimeoutError)
