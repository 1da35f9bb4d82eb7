"""The sentences the emulator models, checked against the installed SDK's source.

If a new `modal` release changes one of them, this fails and the emulator must be revisited
before anyone trusts it again.
"""

from __future__ import annotations

import inspect

import pytest
from modal import _container_entrypoint, _functions, queue, volume
from modal import dict as sdk_dict

CITED = [
    (
        sdk_dict,
        "An individual Dict entry will expire after 7 days of inactivity (no reads or writes)",
    ),
    (sdk_dict, "Note: This is an expensive operation and will return at most 100,000."),
    (sdk_dict, "max_page_size = 100"),
    (sdk_dict, "and results are unordered."),
    (sdk_dict, "if_not_exists=skip_if_exists"),
    (queue, "each partition is cleared 24 hours after the last `put` operation."),
    (queue, "each with up to 5,000 items. Each item can be up to"),
    (queue, "1 MiB, and each partition can be up to 64 MiB in total size."),
    (queue, "max_retries=None"),
    (queue, "request_timeout = 50.0"),
    (queue, "raise queue.Empty()"),
    (volume, "Volumes can only be reloaded if there are no open files for the volume"),
    (volume, "there are open files preventing the operation"),
    (volume, "if not resp.skip_reload:"),
    (_container_entrypoint, 'raise InputCancellation("Input was cancelled by user")'),
    (_container_entrypoint, "This shuts down the container, causing concurrently running inputs"),
    (_functions, "this loader doesn't do anything in practice"),
]


@pytest.mark.parametrize(("module", "sentence"), CITED, ids=[s[:40] for _, s in CITED])
def test_the_sdk_still_says_it(module: object, sentence: str) -> None:
    """Each modeled behaviour's source text is present in modal 1.6.4 as installed."""
    assert sentence in inspect.getsource(module)  # type: ignore[arg-type]
