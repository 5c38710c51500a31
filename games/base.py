"""The vectorized game interface every MuFleet game implements.

A game object is stateless; a `State` holds B games in NumPy arrays whose first dimension
is the batch. Every method works on the whole batch at once, with no Python loop over games.

Conventions shared by all games:
  * Players are numbered 0 (moves first) and 1; one-player games always report 0.
  * Boards in `positions` hold 0 for empty, 1 for player 0's pieces and 2 for player 1's.
  * Observations are float32, channels-last for boards ([B, rows, cols, planes]) and from the
    view of the player to move; every value is exactly representable in
    `spec.observation_dtype`, which is how the replay server stores them.
  * Rewards of two-player games are from the view of the player who just moved:
    +1 if that move ends the game in their win, -1 in their loss, 0 otherwise.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from games.settings import MuZeroSettings  # noqa: F401 - games declare their settings with it
from games.validation import require

if TYPE_CHECKING:
    from games.symmetry import Symmetries


@dataclasses.dataclass(frozen=True)
class GameSpec:
    """What a consumer of a game must know about it.

    Attributes:
      name: registry name, e.g. "cartpole".
      observation_shape: shape of one game's observation (without the batch dimension).
      observation_dtype: NumPy dtype name that holds every observation value exactly
        (e.g. "uint8" for 0/1 board planes, "float32" for cartpole's physics).
      num_actions: size A of the action space; actions are ints in [0, A).
      num_players: 1 or 2.
      discount: per-move discount of the game's return, in (0, 1].
      max_moves: moves after which a game is truncated (cartpole: 500).
    """

    name: str
    observation_shape: tuple[int, ...]
    observation_dtype: str
    num_actions: int
    num_players: int
    discount: float
    max_moves: int

    def __post_init__(self) -> None:
        require(self.name, f"GameSpec.name must be non-empty, got {self.name!r}")
        require(all(d > 0 for d in self.observation_shape),
                f"GameSpec.observation_shape must be positive, got {self.observation_shape}")
        require(np.dtype(self.observation_dtype).name == self.observation_dtype,
                f"GameSpec.observation_dtype must be a NumPy dtype name, got {self.observation_dtype!r}")
        require(self.num_actions >= 2, f"GameSpec.num_actions must be >= 2, got {self.num_actions}")
        require(self.num_players in (1, 2), f"GameSpec.num_players must be 1 or 2, got {self.num_players}")
        require(0.0 < self.discount <= 1.0, f"GameSpec.discount must be in (0, 1], got {self.discount}")
        require(self.max_moves >= 1, f"GameSpec.max_moves must be >= 1, got {self.max_moves}")


# MuZero's invertible transform h (models/support.py: the networks' TensorFlow and NumPy
# versions). Games import no TensorFlow, so the scalar formulas are repeated here, with the same
# epsilon; tests/games checks that both agree.
SUPPORT_EPSILON = 0.001


def value_transform(x: float, eps: float = SUPPORT_EPSILON) -> float:
    """h(x) = sign(x) (sqrt(|x| + 1) - 1) + eps x."""
    return math.copysign(math.sqrt(abs(x) + 1.0) - 1.0, x) + eps * x


def inverse_value_transform(y: float, eps: float = SUPPORT_EPSILON) -> float:
    """h^-1(y), the inverse of `value_transform`."""
    root = (math.sqrt(1.0 + 4.0 * eps * (abs(y) + 1.0 + eps)) - 1.0) / (2.0 * eps)
    return math.copysign(root * root - 1.0, y)


def support_limit(support_size: int) -> float:
    """h^-1(S): the largest magnitude a support over [-S, S] holds without clipping."""
    return inverse_value_transform(float(support_size))


def smallest_support(low: float, high: float) -> int:
    """The smallest support size S >= 1 whose support holds every scalar in [low, high]."""
    return max(1, math.ceil(value_transform(max(abs(low), abs(high)))))


def discounted_steps(discount: float, moves: int) -> float:
    """sum_{t < moves} discount^t: the return of `moves` rewards of 1 (a geometric sum)."""
    if discount == 1.0:
        return float(moves)
    return (1.0 - discount ** moves) / (1.0 - discount)


def check_support(settings: MuZeroSettings, game: str, value_range: tuple[float, float],
                  reward_range: tuple[float, float],
                  value_prefix_range: tuple[float, float] | None = None) -> None:
    """ValueError naming both numbers unless `settings.network.support_size` holds `game`'s values,
    rewards and (with settings.training.value_prefix) value prefixes."""
    ranges = [(value_range, "values", f"{game}'s returns"),
              (reward_range, "rewards", f"{game}'s rewards")]
    if settings.training.value_prefix:
        require(value_prefix_range is not None,
                f"MuZeroSettings.value_prefix: {game} declares no value_prefix_range")
        ranges.append((value_prefix_range, "value prefixes",
                       f"{game}'s value prefixes (sums of up to num_unroll_steps="
                       f"{settings.training.num_unroll_steps} rewards)"))
    S = settings.network.support_size
    limit = support_limit(S)
    for (low, high), what, whose in ranges:
        extreme = high if abs(high) >= abs(low) else low
        if abs(extreme) <= limit:
            continue
        held, reached = _distinct(math.copysign(limit, extreme), extreme)
        raise ValueError(f"MuZeroSettings.support_size={S} holds {what} "
                         f"{'up to' if extreme >= 0 else 'down to'} {held}, but {whose} reach "
                         f"{reached}; a support_size of at least {smallest_support(low, high)} "
                         f"holds them")


def _distinct(a: float, b: float) -> tuple[str, str]:
    """a and b with one decimal, or as many more as it takes to tell them apart."""
    for digits in range(1, 7):
        shown = f"{a:.{digits}f}", f"{b:.{digits}f}"
        if shown[0] != shown[1]:
            break
    return shown


class State:
    """B games. Subclasses are frozen dataclasses whose array fields all lead with [B].

    `rng` (a NumPy Generator) drives resets and chance events such as 2048's tile spawns; it
    is shared by the batch, not per game, and is carried along by `take` and `put`.
    """

    rng: np.random.Generator

    @property
    def batch_size(self) -> int:
        return len(getattr(self, self._array_fields()[0]))

    @classmethod
    def _array_fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "rng"]  # type: ignore[arg-type]

    def take(self, indices: np.ndarray) -> "State":
        """The games at `indices` (int [k]) as a new state of k games."""
        arrays = {name: getattr(self, name)[indices] for name in self._array_fields()}
        return dataclasses.replace(self, **arrays)  # type: ignore[type-var]

    def put(self, indices: np.ndarray, games: "State") -> "State":
        """A copy of this state with the games at `indices` (int [k]) replaced by `games` (k games)."""
        arrays = {}
        for name in self._array_fields():
            array = getattr(self, name).copy()
            array[indices] = getattr(games, name)
            arrays[name] = array
        return dataclasses.replace(self, **arrays)  # type: ignore[type-var]


class Game(abc.ABC):
    """A vectorized game. Subclasses set `spec`, `settings`, `value_range` and `reward_range` and
    implement the methods.

    Shapes: B = number of games in a state, A = spec.num_actions.

    Ranges, derived from the rules (each game's module shows how):
      value_range: (low, high) of every value a target or the network can meet: the return
        discounted by spec.discount from any position to the game's end, from the view of the
        player to move.
      reward_range: (low, high) of one move's reward, 0 included (reward targets are 0 at the
        root and past a game's end).
      rewarded_moves: the most moves of one game whose reward can be nonzero (None: any); it
        bounds the value prefixes (`value_prefix_range`).
    A game class whose `settings` cannot hold them is refused when it is defined
    (`check_settings`), so a game never ships a support that clips its own targets.
    """

    spec: ClassVar[GameSpec]
    settings: ClassVar[MuZeroSettings]
    value_range: ClassVar[tuple[float, float]]
    reward_range: ClassVar[tuple[float, float]]
    rewarded_moves: ClassVar[int | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if all(hasattr(cls, name) for name in ("spec", "settings", "value_range", "reward_range")):
            cls.check_settings(cls.settings)

    @classmethod
    def value_prefix_range(cls, num_unroll_steps: int) -> tuple[float, float]:
        """(low, high) of EfficientZero's value prefix: a sum of up to K = `num_unroll_steps`
        consecutive rewards, undiscounted (services/replay/targets.py). At most K times the
        reward range, or `rewarded_moves` times where a game rewards fewer moves."""
        n = num_unroll_steps if cls.rewarded_moves is None else min(num_unroll_steps, cls.rewarded_moves)
        low, high = cls.reward_range
        return min(0.0, n * low), max(0.0, n * high)

    @classmethod
    def check_settings(cls, settings: MuZeroSettings) -> MuZeroSettings:
        """`settings` if their support holds this game's values, rewards and (with value_prefix)
        value prefixes; ValueError naming the support size, what it holds and what the game
        reaches otherwise. For services that change a game's settings (e.g. support_size)."""
        check_support(settings, cls.spec.name, cls.value_range, cls.reward_range,
                      cls.value_prefix_range(settings.training.num_unroll_steps))
        return settings

    @abc.abstractmethod
    def reset(self, n: int, seed: int | np.random.Generator | None = None) -> State:
        """n new games. `seed` fixes the random stream (starting positions, chance events)."""

    @abc.abstractmethod
    def step(self, state: State, actions: np.ndarray) -> tuple[State, np.ndarray, np.ndarray, np.ndarray]:
        """Plays one action per game.

        Args:
          state: B games, none of them ended.
          actions: int [B], each legal in its game.
        Returns:
          (new state, reward float32 [B], terminated bool [B], truncated bool [B]).
          `truncated` is set only where the move limit ends a game its rules did not end.
        """

    @abc.abstractmethod
    def observation(self, state: State) -> np.ndarray:
        """float32 [B, *spec.observation_shape], from the view of the player to move."""

    @abc.abstractmethod
    def legal_actions(self, state: State) -> np.ndarray:
        """bool [B, A]. Every game that has not ended has at least one legal action."""

    @abc.abstractmethod
    def to_play(self, state: State) -> np.ndarray:
        """int32 [B]: 0 or 1, the player to move (always 0 in one-player games)."""

    @abc.abstractmethod
    def state_from_positions(self, positions: np.ndarray, to_play: np.ndarray | None = None,
                             seed: int | np.random.Generator | None = None) -> State:
        """B games set up at `positions` (the format `positions` returns).

        `to_play` (int [B]) is needed only where the board does not tell whose turn it is.
        """

    def state_from_observation(self, observation: np.ndarray,
                               seed: int | np.random.Generator | None = None) -> State:
        """B games rebuilt from their observations, float32 [B, *spec.observation_shape]: the
        mover's pieces become player 0's and the opponent's player 1's, with player 0 to move.

        For opponents, which see only observations (services/agent/opponents.py). Only the
        two-player board games implement it (their rules are the same for both players, so the
        rebuilt games have the real ones' legal moves and outcomes); ValueError otherwise.
        """
        raise ValueError(f"{self.spec.name}: a state cannot be rebuilt from an observation "
                         f"(only the two-player board games can)")

    @abc.abstractmethod
    def positions(self, state: State) -> np.ndarray:
        """The positions of B games: board int8 [B, rows, cols] with 0 empty, 1 and 2 the
        players' pieces; 2048 tile exponents int8 [B, 4, 4]; cartpole float64 [B, 4]."""

    def symmetries(self) -> "Symmetries | None":
        """The maps of board and actions under which the rules (and the start) do not change,
        for `augment_symmetries`; None where the game declares none."""
        return None

    def episode_statistics(self, observation: np.ndarray, action: np.ndarray) -> dict[str, np.ndarray]:
        """What an evaluation reports of M finished games beyond their return, from the
        observation before each game's last move, float32 [M, *observation_shape], and that
        move, int [M]: name -> [M] array. None by default; 2048 gives its largest tile."""
        return {}


