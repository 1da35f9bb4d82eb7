"""Storage keys and filenames: deterministic, tenant-prefixed, never the raw user name."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.adapters.storage import (
    check_key,
    content_disposition,
    job_prefix,
    output_key,
    safe_filename,
)


@pytest.mark.parametrize(
    ("given_name", "expected"),
    [
        ("image.png", "image.png"),
        ("ComfyUI_00001_.PNG", "ComfyUI_00001.png"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\win.ini", "win.ini"),
        ("/abs/path/photo.jpeg", "photo.jpeg"),
        ("résumé final.webp", "resume_final.webp"),
        ("日本語.png", "output.png"),
        (".htaccess", "output.htaccess"),
        ("", "output"),
        ("..", "output"),
        ("a" * 300 + ".png", "a" * 96 + ".png"),
        ("video.tar.gz", "video.tar.gz"),
        ("x.p$n%g", "x.png"),
        ("evil\x00name.png", "evil_name.png"),
    ],
)
def test_safe_filename(given_name: str, expected: str) -> None:
    assert safe_filename(given_name) == expected


def test_output_key_layout_is_deterministic():
    key = output_key("tenant-1", "user-9", "job-abc", 3, "../../x/ComfyUI_0001_.png")

    assert key == "outputs/tenant-1/user-9/job-abc/03-ComfyUI_0001.png"
    assert key == output_key("tenant-1", "user-9", "job-abc", 3, "../../x/ComfyUI_0001_.png")
    assert key.startswith(job_prefix("tenant-1", "user-9", "job-abc"))


def test_ids_are_encoded_into_single_segments():
    key = output_key("t/../x", "..", "a b@c", 0, "a.png")

    assert key == "outputs/t%2F..%2Fx/%2E./a%20b%40c/00-a.png"
    check_key(key)


def test_job_prefix_does_not_match_a_longer_job_id():
    assert not output_key("t", "u", "job10", 0, "a.png").startswith(job_prefix("t", "u", "job1"))


@pytest.mark.parametrize("ids", [("", "u", "j"), ("t", "", "j"), ("t", "u", "")])
def test_output_key_rejects_empty_ids(ids: tuple[str, str, str]) -> None:
    with pytest.raises(ValueError):
        output_key(*ids, 0, "a.png")


def test_output_key_rejects_negative_index():
    with pytest.raises(ValueError):
        output_key("t", "u", "j", -1, "a.png")


@given(
    tenant=st.text(min_size=1, max_size=40),
    user=st.text(min_size=1, max_size=40),
    job=st.text(min_size=1, max_size=40),
    index=st.integers(min_value=0, max_value=999),
    filename=st.text(max_size=200),
)
def test_every_output_key_is_safe(tenant, user, job, index, filename):
    key = output_key(tenant, user, job, index, filename)

    check_key(key)  # raises if unsafe
    segments = key.split("/")
    assert len(segments) == 5
    assert segments[0] == "outputs"
    assert key.isascii()
    assert len(segments[-1]) <= len(f"{index:02d}-") + 100


@pytest.mark.parametrize(
    "bad",
    ["", "/abs", "a/../b", "a/./b", "a//b", "..", "a\\b", "a/.hidden", "a/b\n", "a\x00b"],
)
def test_check_key_refuses_unsafe_keys(bad: str) -> None:
    with pytest.raises(ValueError):
        check_key(bad)


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("a.png", 'attachment; filename="a.png"'),
        ('a"b%.png', "attachment; filename=\"a_b_.png\"; filename*=UTF-8''a%22b%25.png"),
        ("dir\\c.png", 'attachment; filename="c.png"'),
        ("über.png", "attachment; filename=\"_ber.png\"; filename*=UTF-8''%C3%BCber.png"),
        ("x/../../y.png", 'attachment; filename="y.png"'),
        (
            "a\r\nSet-Cookie: x",
            (
                'attachment; filename="a__Set-Cookie: x"; '
                "filename*=UTF-8''a%0D%0ASet-Cookie%3A%20x"
            ),
        ),
        ("", 'attachment; filename="download"'),
    ],
)
def test_content_disposition_is_ascii_and_quoted(filename: str, expected: str) -> None:
    value = content_disposition(filename)

    assert value == expected
    assert value.isascii()
    assert "\r" not in value and "\n" not in value
