"""Server-chosen ids and paths that stay in their folder (pure).

Job ids are ours: `job_` and 32 lower-case hex digits (`new_job_id`). An id from outside
(the intake queue's message) is accepted only in exactly that form, checked with
`fullmatch`, so `../../dir`, an absolute path or a trailing newline never becomes a job,
a storage key or a folder. `inside` joins a name to a folder and refuses a result that
is not strictly below it.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from app.core.errors import InvalidRequest

__all__ = [
    "JOB_ID",
    "JOB_ID_PATTERN",
    "UPLOAD_ID",
    "inside",
    "is_job_id",
    "new_job_id",
    "new_upload_id",
]

JOB_ID_PATTERN = r"job_[0-9a-f]{32}"
JOB_ID = re.compile(JOB_ID_PATTERN)


def new_job_id() -> str:
    """An unguessable job id in the one accepted form."""
    return "job_" + uuid.uuid4().hex


#: Upload ids are ours too, and only this form is ever looked up.
UPLOAD_ID = re.compile(r"upl_[0-9a-f]{32}")


def new_upload_id() -> str:
    """An unguessable upload id (it is a capability only together with the owner's key)."""
    return "upl_" + uuid.uuid4().hex


def is_job_id(value: object) -> bool:
    """Whether `value` is exactly a job id of ours (a trailing newline is not)."""
    return isinstance(value, str) and JOB_ID.fullmatch(value) is not None


def is_ascii_number(text: str) -> bool:
    """Whether `text` is a whole number in ASCII digits, as `int(text)` reads it.

    `str.isdigit()` alone also accepts digits such as "\u00b9" that `int()` refuses: a
    client's "?limit=\u00b9" or a node named "\u00b2" ended in a 500.
    """
    return text.isascii() and text.isdigit()


def inside(folder: Path, name: str) -> Path:
    """`folder / name`, or `InvalidRequest` if that is not strictly inside `folder`.

    Refused: an empty name, `.`/`..` anywhere, absolute paths, backslashes and NUL. The
    check is lexical (nothing is resolved), so it holds for folders not yet created.
    """
    if not name or "\x00" in name or "\\" in name or os.path.isabs(name):
        raise InvalidRequest(f"the name {name!r} is not a plain name inside its folder")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise InvalidRequest(f"the name {name!r} is not a plain name inside its folder")
    base = Path(os.path.normpath(folder))
    joined = Path(os.path.normpath(base / name))
    if joined == base or not joined.is_relative_to(base):
        raise InvalidRequest(f"the name {name!r} escapes its folder")
    return joined
