"""A semantic emulator of the Modal objects this project uses (see README.md here).

emu = ModalEmulator(mode="manual")
with emu.install():                  # modal.Dict/Queue/Volume.from_name, spawn, ...
    d = modal.Dict.from_name("x", create_if_missing=True)
    with emu.ledger.step("POST /v1/jobs"):
        d.put("k", "v", skip_if_exists=True)
    emu.ledger.count(step="POST /v1/jobs"), emu.ledger.sequential("POST /v1/jobs")
"""

from __future__ import annotations

from tests.modal_emulator.clock import SimClock
from tests.modal_emulator.dict import ENTRY_TTL_S, KEYS_PAGE_SIZE, LEN_CAP, EmulatedDict
from tests.modal_emulator.emulator import ModalEmulator, function_key
from tests.modal_emulator.errors import ContainerStopped, EmulatedHang
from tests.modal_emulator.functions import Container, EmulatedFunction, EmulatedFunctionCall
from tests.modal_emulator.ledger import DEFAULT_LATENCY_S, Faults, Ledger, Rpc
from tests.modal_emulator.queue import (
    DEFAULT_PARTITION_TTL_S,
    MAX_ITEM_BYTES,
    MAX_PARTITION_BYTES,
    MAX_PARTITION_ITEMS,
    EmulatedQueue,
)
from tests.modal_emulator.volume import EmulatedVolume

__all__ = [
    "DEFAULT_LATENCY_S",
    "DEFAULT_PARTITION_TTL_S",
    "ENTRY_TTL_S",
    "KEYS_PAGE_SIZE",
    "LEN_CAP",
    "MAX_ITEM_BYTES",
    "MAX_PARTITION_BYTES",
    "MAX_PARTITION_ITEMS",
    "Container",
    "ContainerStopped",
    "EmulatedDict",
    "EmulatedFunction",
    "EmulatedFunctionCall",
    "EmulatedHang",
    "EmulatedQueue",
    "EmulatedVolume",
    "Faults",
    "Ledger",
    "ModalEmulator",
    "Rpc",
    "SimClock",
    "function_key",
]
