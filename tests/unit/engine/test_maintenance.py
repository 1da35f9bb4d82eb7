"""The sweep's wake-up plan: how many consumer calls each stage gets."""

from __future__ import annotations

import pytest

from app.core.models import Stage
from app.engine.maintenance import wake_plan


@pytest.mark.parametrize(
    "lengths, waiting, parallel, expected",
    [
        ({Stage.FETCH: 0, Stage.RENDER: 0}, {}, 1, {}),
        ({Stage.FETCH: 40}, {}, 1, {Stage.FETCH: 1}),
        ({Stage.FETCH: 40}, {Stage.FETCH: 1}, 1, {}),  # a drainer is already on its way
        ({Stage.RENDER: 3}, {}, 1, {Stage.RENDER: 1}),  # no more than can run at once
        ({Stage.RENDER: 3}, {}, 8, {Stage.RENDER: 3}),
        ({Stage.RENDER: 3}, {Stage.RENDER: 2}, 8, {Stage.RENDER: 1}),
        ({Stage.RENDER: 2}, {Stage.RENDER: 5}, 8, {}),
        (
            {Stage.INTAKE: 1, Stage.NOTIFY: 2, Stage.UPLOAD: 0},
            {},
            1,
            {Stage.INTAKE: 1, Stage.NOTIFY: 1},
        ),
    ],
)
def test_wake_plan(
    lengths: dict[Stage, int],
    waiting: dict[Stage, int],
    parallel: int,
    expected: dict[Stage, int],
) -> None:
    assert wake_plan(lengths, waiting, parallel) == expected
