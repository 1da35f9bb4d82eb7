"""Server-chosen ids, `inside`, and every name/id pattern matched whole (`fullmatch`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.core.errors import InvalidRequest
from app.core.ids import inside, is_job_id, new_job_id
from app.core.schemas import USER_ID, InputField


def test_new_job_ids_are_accepted_and_nothing_else_is() -> None:
    job_id = new_job_id()
    assert is_job_id(job_id)
    for bad in (
        job_id + "\n",
        job_id.upper(),
        "job_" + "0" * 31,
        "../../dir",
        "/tmp/x",
        "job_../../x",
        f"{job_id}/x",
        "",
        None,
        42,
    ):
        assert not is_job_id(bad), bad


@pytest.mark.parametrize("name", ["a", "a.png", "job_1", "sub/x.png"])
def test_inside_joins_plain_names(tmp_path: Path, name: str) -> None:
    assert inside(tmp_path, name) == tmp_path / name


@pytest.mark.parametrize(
    "name", ["", ".", "..", "../x", "a/../../x", "/etc/passwd", "a\\..\\b", "a\x00", "a//b", "a/"]
)
def test_inside_refuses_what_escapes_or_is_not_plain(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidRequest):
        inside(tmp_path, name)


def test_input_names_refuse_a_trailing_newline() -> None:
    InputField(name="x.png", url="https://example.com/x.png")
    with pytest.raises(ValidationError):
        InputField(name="x.png\n", url="https://example.com/x.png")


def test_user_ids_refuse_a_trailing_newline() -> None:
    assert USER_ID.fullmatch("alice")
    assert not USER_ID.fullmatch("alice\n")


def test_tenant_names_and_pins_refuse_a_trailing_newline() -> None:
    from app.deploy.modal import manifest
    from app.store.tenants import TENANT_NAME

    assert TENANT_NAME.fullmatch("acme") and not TENANT_NAME.fullmatch("acme\n")
    assert manifest.is_full_sha("0" * 40) and not manifest.is_full_sha("0" * 40 + "\n")


def test_no_pattern_in_app_is_matched_with_match_and_a_dollar() -> None:
    """`re.match(...$)` accepts a final newline; names and ids use `fullmatch`."""
    import re

    root = Path(__file__).resolve().parents[3] / "app"
    offenders = [
        f"{path.relative_to(root)}:{number}"
        for path in root.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\b[A-Z_]+\.match\(|re\.match\(", line)
    ]
    assert offenders == []
