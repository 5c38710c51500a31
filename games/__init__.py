"""MuFleet's vectorized NumPy games behind one interface (see games/base.py).

    from games import make, names
    game = make("cartpole")
"""

from __future__ import annotations

from games.base import Game, GameSpec, MuZeroSettings, State

_REGISTRY: dict[str, tuple[str, str]] = {
    "cartpole": ("games.cartpole", "CartPole"),
    "tictactoe": ("games.tictactoe", "TicTacToe"),
    "connect4": ("games.connect4", "ConnectFour"),
    "2048": ("games.g2048", "Game2048"),
    "othello": ("games.othello", "Othello"),
}


def names() -> list[str]:
    """The registered game names."""
    return list(_REGISTRY)


def make(name: str) -> Game:
    """A game by registry name; ValueError naming the known games for an unknown one."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown game {name!r}; known games: {', '.join(_REGISTRY)}")
    import importlib

    module_name, class_name = _REGISTRY[name]
    return getattr(importlib.import_module(module_name), class_name)()


__all__ = ["Game", "GameSpec", "MuZeroSettings", "State", "make", "names"]
