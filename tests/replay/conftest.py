"""Fixtures of the replay tests: buffers in tmp dirs."""

from __future__ import annotations

from typing import Callable, Iterator

import pytest

from games.base import GameSpec
from replay_helpers import ONE_PLAYER
from services.replay.buffer import ReplayBuffer
from services.replay.config import ReplayConfig


@pytest.fixture
def make_buffer(tmp_path) -> Iterator[Callable[..., ReplayBuffer]]:
    """make_buffer(spec, **config fields) -> a ReplayBuffer in tmp_path (closed after the test).
    Defaults: capacity 10_000, min_positions 0, seed 0, K and n as given or 5 and 10."""
    opened: list[ReplayBuffer] = []

    def make(spec: GameSpec = ONE_PLAYER, data_dir=None, **fields) -> ReplayBuffer:
        fields = {"capacity": 10_000, "min_positions": 0, "seed": 0, "discount": spec.discount,
                  **fields}
        config = ReplayConfig(spec=spec, data_dir=str(data_dir or tmp_path / "replay"), **fields)
        buffer = ReplayBuffer(config)
        opened.append(buffer)
        return buffer

    yield make
    for buffer in opened:
        buffer.close()
