"""Board symmetries: maps of cells and actions under which a game's rules do not change.

Training on a random symmetric image of every sampled position (AlphaGo Zero's data
augmentation) shows the network each position in all of its equivalent orientations, so what
it learns about one corner of a tic-tac-toe board holds for the other three.

A game declares its symmetries as a `Symmetries` (`Game.symmetries()`); `Symmetries.augment`
maps a training batch: observations, the unrolled actions and the policy targets. Values,
rewards and masks do not change under a symmetry.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from games.validation import require


@dataclasses.dataclass(frozen=True, eq=False)
class Symmetries:
    """G maps of a board game, the identity first.

    Attributes:
      cells: int64 [G, H*W]: cells[g, c] is the image under map g of cell c (row-major flat
        index of the observation's [H, W] board; the planes axis comes last and is unchanged).
      actions: int64 [G, A]: actions[g, a] is the image of action a (a permutation of [0, A)).
    """

    cells: np.ndarray
    actions: np.ndarray

    def __post_init__(self) -> None:
        cells, actions = np.asarray(self.cells), np.asarray(self.actions)
        require(cells.ndim == 2 and actions.ndim == 2 and len(cells) == len(actions) >= 1,
                f"Symmetries: cells [G, H*W] and actions [G, A] need the same G >= 1, got shapes "
                f"{cells.shape} and {actions.shape}")
        for name, maps in (("cells", cells), ("actions", actions)):
            require(bool((np.sort(maps, axis=1) == np.arange(maps.shape[1])).all()),
                    f"Symmetries.{name}: every row must be a permutation of [0, {maps.shape[1]})")
            require(bool((maps[0] == np.arange(maps.shape[1])).all()),
                    f"Symmetries.{name}: the first map must be the identity, got {maps[0].tolist()}")
        object.__setattr__(self, "cells", cells.astype(np.int64))
        object.__setattr__(self, "actions", actions.astype(np.int64))
        # Gathering is faster than scattering: an image takes cell c' from cells^-1[c'].
        object.__setattr__(self, "_cells_from", np.argsort(self.cells, axis=1))
        object.__setattr__(self, "_actions_from", np.argsort(self.actions, axis=1))

    def __len__(self) -> int:
        return len(self.cells)

    def augment(self, observation: np.ndarray, actions: np.ndarray, policy: np.ndarray,
                which: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The images of B training samples, sample b under map which[b].

        Args:
          observation: [B, H, W, C] boards (channels last).
          actions: int [B, K], the unrolled actions.
          policy: float [B, K+1, A], the policy targets.
          which: int [B] in [0, G).
        Returns:
          (observation [B, H, W, C], actions int32 [B, K], policy [B, K+1, A]), new arrays.
        """
        observation, actions, policy = np.asarray(observation), np.asarray(actions), np.asarray(policy)
        which = np.asarray(which, np.int64)
        B = len(which)
        require(observation.ndim == 4 and observation.shape[0] == B
                and observation.shape[1] * observation.shape[2] == self.cells.shape[1],
                f"observation must be [B={B}, H, W, C] with H*W = {self.cells.shape[1]}, got {observation.shape}")
        require(policy.ndim == 3 and policy.shape[0] == B and policy.shape[2] == self.actions.shape[1],
                f"policy must be [B={B}, K+1, A={self.actions.shape[1]}], got {policy.shape}")
        require(actions.ndim == 2 and actions.shape[0] == B, f"actions must be [B={B}, K], got {actions.shape}")
        require(bool(((which >= 0) & (which < len(self))).all()), f"which must lie in [0, {len(self)})")
        rows = np.arange(B)[:, None]
        flat = observation.reshape(B, -1, observation.shape[3])
        mapped_observation = flat[rows, self._cells_from[which]].reshape(observation.shape)
        mapped_actions = self.actions[which[:, None], actions].astype(np.int32)
        mapped_policy = policy[rows[:, :, None], np.arange(policy.shape[1])[None, :, None],
                               self._actions_from[which][:, None, :]]
        return mapped_observation, mapped_actions, mapped_policy


def dihedral_cells(size: int) -> np.ndarray:
    """int64 [8, size*size]: the 8 symmetries of a square board (identity first), as images of
    each row-major cell: the identity, 3 rotations, and 4 reflections."""
    r, c = np.divmod(np.arange(size * size), size)
    n = size - 1
    images = [(r, c), (c, n - r), (n - r, n - c), (n - c, r),      # rotations by 0, 90, 180, 270
              (r, n - c), (n - r, c), (c, r), (n - c, n - r)]      # mirrors: columns, rows, 2 diagonals
    return np.stack([rr * size + cc for rr, cc in images])


def direction_actions(cells: np.ndarray, size: int, directions: list[tuple[int, int]]) -> np.ndarray:
    """int64 [G, D]: the image of each move direction (d_row, d_col) under each cell map of a
    size x size board (`cells` [G, size*size], as from `dihedral_cells`): where a step from a
    cell in direction d lands after the map, seen from the mapped cell. For games whose actions
    are directions (2048's up, right, down, left)."""
    start_r = start_c = size // 2 - 1                    # a cell with a neighbour in every direction
    origin = start_r * size + start_c
    images = np.zeros((len(cells), len(directions)), np.int64)
    for g, cell_map in enumerate(cells):
        r0, c0 = divmod(int(cell_map[origin]), size)
        for i, (dr, dc) in enumerate(directions):
            r1, c1 = divmod(int(cell_map[(start_r + dr) * size + start_c + dc]), size)
            images[g, i] = directions.index((r1 - r0, c1 - c0))
    return images


def mirror_columns_cells(rows: int, cols: int) -> np.ndarray:
    """int64 [2, rows*cols]: the identity and the left-right mirror of a rows x cols board."""
    r, c = np.divmod(np.arange(rows * cols), cols)
    return np.stack([r * cols + c, r * cols + (cols - 1 - c)])
