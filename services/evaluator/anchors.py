"""Earlier model versions as rungs of the ladder: copies of their SavedModels kept in the
evaluator's state directory (the trainer prunes its own model directory to its newest few),
each loaded in process and played as an opponent that searches with that model, greedily."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

import games
from models.durable import fsync_directory, fsync_tree
from services.agent.search import SearchConfig

ANCHORS_DIR = "anchors"


def anchor_name(version: int) -> str:
    """The ladder's (and the ratings') name of model version `version`: "v<version>"."""
    return f"v{int(version)}"


class ModelOpponent:
    """An opponent (services.agent.opponents.Opponent) that plays one loaded model version's
    greedy move after a search with `simulations` simulations, as the evaluated model does.

    Its search has a fixed batch of `max_games` rows (the trees are preallocated); a call with
    fewer games (evaluate() asks only for the opponent's own moves in unfinished games) pads with
    copies of its first game, whose moves are dropped.
    """

    def __init__(self, network, game_name: str, simulations: int, max_games: int,
                 search_changes: Mapping[str, Any] | None = None) -> None:
        from services.agent.pipeline import PipelinedSearch

        game = games.make(game_name)
        self.network = network
        self.version = int(network.wait_until_available())
        self.max_games = max_games
        settings = game.settings.replace(num_simulations=simulations, **(search_changes or {}))
        self.search = PipelinedSearch(network, SearchConfig.from_settings(settings), max_games,
                                      game.spec.num_actions, two_player=game.spec.num_players == 2)

    def __call__(self, observation: np.ndarray, legal_actions: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
        n = len(observation)
        if n > self.max_games:
            raise ValueError(f"ModelOpponent: {n} games asked of a search of {self.max_games}")
        observation = np.asarray(observation, np.float32)
        if n < self.max_games:
            pad = self.max_games - n
            observation = np.concatenate([observation, np.repeat(observation[:1], pad, axis=0)])
            legal_actions = np.concatenate([legal_actions, np.repeat(legal_actions[:1], pad, axis=0)])
        result = self.search.search(observation, legal_actions, rng, training=False, temperature=0.0,
                                    version=self.version)
        return np.asarray(result.greedy_actions[:n], np.int32)


class Anchors:
    """The kept anchors: `<state_dir>/anchors/<version>/`, copies of the trainer's versions.

    Args:
      state_dir: the evaluator's state directory.
      models: the trainer's model base path, where versions are copied from.
      every: a version is kept when it is at least this many versions after the newest kept one
        (or when none is kept yet).
      keep: anchors kept at most; keeping one more removes the oldest.
    """

    def __init__(self, state_dir: str | os.PathLike, models: str | os.PathLike, every: int, keep: int) -> None:
        from models.export import list_versions

        self.dir = Path(state_dir) / ANCHORS_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob(".tmp-*"):  # a copy cut by a kill
            shutil.rmtree(stale, ignore_errors=True)
        self.models = Path(models)
        self.every = every
        self.keep = keep
        self.versions: list[int] = list_versions(self.dir)
        self._opponents: dict[int, ModelOpponent] = {}

    def due(self, version: int) -> bool:
        """Whether `version` is to be kept: none is kept yet, or it is `every` past the newest."""
        return not self.versions or version >= self.versions[-1] + self.every

    def add(self, version: int) -> list[int]:
        """Copies `models/<version>` into the anchors (atomically: a temporary copy renamed into
        place) and removes the oldest beyond `keep`; returns the removed versions. Raises
        FileNotFoundError when the trainer's directory no longer holds the version."""
        source = self.models / str(version)
        if not source.is_dir():
            raise FileNotFoundError(f"{source}: version {version} is not in the model directory (pruned?)")
        target = self.dir / str(version)
        if not target.exists():
            temporary = self.dir / f".tmp-{version}"
            shutil.rmtree(temporary, ignore_errors=True)
            shutil.copytree(source, temporary)
            fsync_tree(temporary)  # a crash must not leave a published anchor with torn files
            os.replace(temporary, target)
            fsync_directory(self.dir)
        self.versions = sorted({*self.versions, version})
        removed = []
        while len(self.versions) > self.keep:
            oldest = self.versions.pop(0)
            self._opponents.pop(oldest, None)
            shutil.rmtree(self.dir / str(oldest), ignore_errors=True)
            removed.append(oldest)
        return removed

    def opponent(self, version: int, game: str, simulations: int, max_games: int,
                 search_changes: Mapping[str, Any] | None = None) -> ModelOpponent:
        """The kept version `version` as an opponent (loaded once, then reused), searching with
        the game's settings and `search_changes`."""
        if version not in self._opponents:
            from models.export import load_version
            from services.agent.local_network import LocalNetwork

            network = LocalNetwork(load_version(self.dir, version))
            self._opponents[version] = ModelOpponent(network, game, simulations, max_games, search_changes)
        return self._opponents[version]
