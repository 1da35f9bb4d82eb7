"""Serialization of Dict values and Queue items, as the SDK does it (cloudpickle).

Plain values (str, bytes, numbers, None), nearly everything the app stores, go through
`pickle` at cloudpickle's protocol: the same bytes (`cloudpickle.dumps` of a plain value
is `pickle.dumps` at `cloudpickle.DEFAULT_PROTOCOL`) at a tenth of the cost, which a
simulated month of millions of round trips notices. Anything else goes to cloudpickle.
"""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle

_PLAIN = (str, bytes, int, float, bool, type(None))
_PROTOCOL: int = cloudpickle.DEFAULT_PROTOCOL


def dumps(value: Any) -> bytes:
    if type(value) in _PLAIN:
        return pickle.dumps(value, protocol=_PROTOCOL)
    data: bytes = cloudpickle.dumps(value)
    return data


loads = pickle.loads  # what cloudpickle.loads is
