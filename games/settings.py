"""A game's MuZero settings, in sections: each section is declared and validated once, here,
and the service that uses it embeds it (`SearchConfig` extends `SearchSettings`, `ReplayConfig`
reads `ReplaySettings`, `TrainerConfig` holds the whole `MuZeroSettings`).

    settings = MuZeroSettings(
        network=NetworkSettings(architecture="fc", hidden_size=64, support_size=16),
        search=SearchSettings(num_simulations=16, max_considered_actions=2),
        replay=ReplaySettings(capacity=100_000), training=TrainingSettings(batch_size=256),
        discount=0.99)
    settings.search.num_simulations                  # 16
    settings.replace(num_simulations=32)             # one field, found in its section

Sections:
  * `NetworkSettings`: the representation, dynamics and prediction networks and their supports.
  * `SearchSettings`: the search of every move (agent, evaluator, play page).
  * `ReplaySettings`: what the replay server keeps and how it samples.
  * `TrainingSettings`: the learning targets and the optimizer.
  * `FleetSettings`: how the fleet is sized around the game (games per agent process): a
    game's default, which a deployment overrides (`--games-per-batch`).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Literal

from games.validation import require


def _at_least(section: object, minimum: float, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        require(value >= minimum,
                f"{type(section).__name__}.{name} must be >= {minimum:g}, got {value}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class NetworkSettings:
    """The networks (models/networks.py).

    Attributes:
      architecture: "fc" (vector observations) or "resnet" (boards, channels-last).
      hidden_size: size of the hidden state vector ("fc") or channels ("resnet").
      fc_layers: widths of the hidden layers of each "fc" head and trunk.
      res_blocks: residual blocks in each "resnet" trunk.
      support_size: value and reward are categorical over the integers [-S, S] after MuZero's
        transform h(x); S = support_size. Such a support holds scalars of magnitude up to
        h^-1(S) (`games.base.support_limit`); targets beyond are clipped. A game refuses
        settings whose support cannot hold its `value_range`, `reward_range` and, with
        value_prefix, its `value_prefix_range` (`Game.check_settings`).
      chance_codes: C >= 0; C > 0 makes it Stochastic MuZero (Antonoglou et al. 2022): chance
        between an action and the next state is one of C learned codes, the networks get
        afterstates and a chance encoder, and every search of such a model takes the
        "stochastic" policy with A + C edges a node (the model tells it C). 0: plain MuZero.
    """

    architecture: Literal["fc", "resnet"]
    hidden_size: int
    fc_layers: tuple[int, ...] = (64,)
    res_blocks: int = 1
    support_size: int = 10
    chance_codes: int = 0

    def __post_init__(self) -> None:
        require(self.architecture in ("fc", "resnet"),
                f"NetworkSettings.architecture must be 'fc' or 'resnet', got {self.architecture!r}")
        _at_least(self, 1, "hidden_size", "support_size")
        _at_least(self, 0, "res_blocks", "chance_codes")
        require(isinstance(self.chance_codes, numbers.Integral) and not isinstance(self.chance_codes, bool),
                f"NetworkSettings.chance_codes must be an int, got {self.chance_codes!r}")
        require(all(w >= 1 for w in self.fc_layers),
                f"NetworkSettings.fc_layers must be positive widths, got {self.fc_layers}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchSettings:
    """The search of every move (services/agent/search/).

    Attributes:
      num_simulations: S >= 1 simulations per move; a tree holds N = S + 1 nodes.
      search: the policy: "gumbel" (Gumbel MuZero, learns with few simulations) or "puct"
        (MuZero's PUCT) for a plain MuZero model, or "stochastic" (Stochastic MuZero: PUCT
        over decision nodes and chance nodes) and "stochastic_gumbel" (Gumbel's decision nodes
        over chance nodes), which a search takes by itself for a model with chance codes
        (`NetworkSettings.chance_codes`; "gumbel" becomes "stochastic_gumbel", "puct"
        "stochastic"); naming one of those here needs such a model.
        `services.agent.search.policies.POLICIES` holds them.
      pb_c_base: PUCT's exploration base (> 0).
      pb_c_init: PUCT's exploration constant (>= 0).
      root_dirichlet_alpha: Dirichlet concentration (> 0) of the root noise ("puct", training).
      root_exploration_fraction: weight in [0, 1] of that noise in the root prior.
      max_considered_actions: m >= 1, Gumbel-top-k size at the root ("gumbel"); a game with
        fewer legal actions considers them all.
      gumbel_scale: >= 0, scale of the root Gumbel noise in training (evaluation uses 0).
      value_scale: >= 0, the completed-Q transform sigma(q) = (maxvisit_init + max N) *
        value_scale * q.
      maxvisit_init: >= 0, the constant of that transform.
      rescale_values: min-max rescale each node's completed Q to [0, 1] before sigma ("gumbel",
        mctx's `rescale_values`). False uses Q as it is: for games whose values already lie in
        a known range such as [-1, 1], where rescaling would blow the noise of a flat set of
        Q values (a position where every move draws) up to the full range.
      temperature: >= 0, visit-count temperature of the action choice in self-play (N^(1/T);
        0 is greedy). Evaluation uses 0.
      temperature_moves: moves of a game played with `temperature`; later moves are greedy.
      random_opening_moves: >= 0: self-play plays the first this many moves of every game
        uniformly at random among the legal ones (the search still runs, and its policy stays
        the move's policy target), so that the replay holds openings the network's own play
        would rarely reach, such as an opponent's choice among equally good moves. 0: none.
        Evaluation never does.
      random_branch_probability: in [0, 1], the probability that a self-play move at a ply
        below random_branch_plies (both players' moves count) is played uniformly at random
        instead of the search's choice, each such ply drawn on its own. After each random move
        the game's record starts over from the position that follows: the moves before it
        would carry value targets that a random move decided, so they are dropped rather than
        learned from (KataGo's branching). What the replay gets is positions the network's own
        play would rarely reach, including ones two unusual moves deep, played out by the
        search from there. 0: none. Evaluation never branches.
      random_branch_plies: >= 1 when games branch: the plies [0, random_branch_plies) that may
        be played at random.
    """

    num_simulations: int = 16
    search: str = "gumbel"
    pb_c_base: float = 19652.0
    pb_c_init: float = 1.25
    root_dirichlet_alpha: float = 0.25
    root_exploration_fraction: float = 0.25
    max_considered_actions: int = 16
    gumbel_scale: float = 1.0
    value_scale: float = 0.1
    maxvisit_init: float = 50.0
    rescale_values: bool = True
    temperature: float = 1.0
    temperature_moves: int = 1_000_000
    random_opening_moves: int = 0
    random_branch_probability: float = 0.0
    random_branch_plies: int = 0

    def __post_init__(self) -> None:
        name = type(self).__name__
        for field in ("num_simulations", "max_considered_actions", "temperature_moves", "random_opening_moves",
                      "random_branch_plies"):
            value = getattr(self, field)
            require(isinstance(value, numbers.Integral) and not isinstance(value, bool),
                    f"{name}.{field} must be an int, got {value!r}")
        _at_least(self, 1, "num_simulations", "max_considered_actions")
        _at_least(self, 0, "pb_c_init", "gumbel_scale", "value_scale", "maxvisit_init",
                  "temperature", "temperature_moves", "random_opening_moves", "random_branch_plies")
        require(0.0 <= self.random_branch_probability <= 1.0,
                f"{name}.random_branch_probability must be in [0, 1], got {self.random_branch_probability}")
        require(self.random_branch_probability == 0 or self.random_branch_plies >= 1,
                f"{name}.random_branch_plies must be >= 1 when random_branch_probability > 0 "
                f"(it is {self.random_branch_probability}), got {self.random_branch_plies}")
        require(self.pb_c_base > 0, f"{name}.pb_c_base must be > 0, got {self.pb_c_base}")
        require(self.root_dirichlet_alpha > 0,
                f"{name}.root_dirichlet_alpha must be > 0, got {self.root_dirichlet_alpha}")
        require(0.0 <= self.root_exploration_fraction <= 1.0,
                f"{name}.root_exploration_fraction must be in [0, 1], got {self.root_exploration_fraction}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReplaySettings:
    """What the replay server keeps and how it samples (services/replay/; `ReplayConfig`
    extends it with the server's own fields).

    Attributes:
      capacity: stored positions kept (look-ahead context included); when an add would exceed
        it, the oldest records are evicted, from memory and disk, in the add's transaction.
      min_positions: no sampling until this many sampleable positions are stored.
      samples_per_insert: target ratio of sampled to inserted (sampleable) positions; 0 turns the
        ratio limit off. With it on, a sample of B positions waits until
        samples + B <= samples_per_insert * (inserts - min_positions) + error_buffer.
      block_inserts: with samples_per_insert > 0, an AddGames waits too while the inserts are
        ahead of the ratio: while min_positions have been reached and samples_per_insert *
        (inserts - min_positions) > samples + error_buffer (checked on the state before the
        add, which then goes in whole), so that self-play is held back when it runs ahead of
        training (EfficientZero's many samples per environment step), as in Reverb. Deadlock-free
        while error_buffer >= B / 2 for the trainer's batch B (the replay refuses larger
        batches then); the replay's default error_buffer is 10 x batch_size. False (the
        default): inserts are never blocked, only samplers wait. docs/replay.md, Rate limiter.
      priority_alpha: sampling probability is priority ** alpha / sum; 0 is uniform.
      priority_beta: importance-weight exponent in [0, 1].
      reanalysed_target_fraction: in [0, 1]: the probability that a sampled position whose
        targets have been reanalysed uses the reanalysed root values (the value bootstraps of
        its n-step targets) and policies (its policy targets) instead of the self-play ones;
        drawn per sampled position. 1 always uses a reanalysis where there is one, 0 never.
      td_age_versions_per_step: EfficientZero's off-policy correction: the n of a value target
        shrinks by one for every this many model versions its data is older than the newest
        version the buffer has seen, n = clip(td_steps - age // this, 1, td_steps); 0 turns it
        off (n = td_steps).
    """

    capacity: int = 200_000
    min_positions: int = 2_000
    samples_per_insert: float = 0.0
    block_inserts: bool = False
    priority_alpha: float = 1.0
    priority_beta: float = 1.0
    reanalysed_target_fraction: float = 1.0
    td_age_versions_per_step: int = 0

    def __post_init__(self) -> None:
        _at_least(self, 1, "capacity")
        _at_least(self, 0, "min_positions", "samples_per_insert", "priority_alpha",
                  "td_age_versions_per_step")
        require(0 <= self.priority_beta <= 1,
                f"{type(self).__name__}.priority_beta must be in [0, 1], got {self.priority_beta}")
        require(0 <= self.reanalysed_target_fraction <= 1,  # also refuses NaN
                f"{type(self).__name__}.reanalysed_target_fraction must be in [0, 1], got "
                f"{self.reanalysed_target_fraction}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingSettings:
    """The learning targets and the optimizer (services/trainer/).

    Attributes:
      num_unroll_steps: K, dynamics steps unrolled in training (and the replay's default K).
      td_steps: n of the n-step value target.
      value_prefix: EfficientZero's value prefix: the dynamics' reward head becomes an LSTM
        over the unrolled hidden states that predicts the sum of the rewards since the last
        reset (every `value_prefix_horizon` steps of an unroll or a search path), the replay
        serves such sums as reward targets, and the search turns prefixes back into per-edge
        rewards by differences. The exported model carries the LSTM's state as one more
        tensor (`value_prefix_state`). docs/trainer.md.
      value_prefix_horizon: H >= 1: the LSTM's state and the sum restart every H steps
        (EfficientZero: 5). Only used with value_prefix.
      value_prefix_lstm_size: L >= 1, the LSTM's width; its state is [h, c], float32 [2L].
        Only used with value_prefix.
      batch_size: training batch size (positions).
      learning_rate: the initial learning rate (> 0).
      lr_decay_steps: the learning rate is multiplied by lr_decay_rate every this many steps
        (exponential schedule).
      lr_decay_rate: in (0, 1].
      weight_decay: L2 coefficient.
      optimizer: "adam" or "sgd" (momentum 0.9).
      augment_symmetries: train each sampled position under a random one of the game's board
        symmetries (`Game.symmetries()`; games without symmetries ignore it).
      export_interval: trainer steps between exported model versions.
      ema_decay: in [0, 1): exported versions hold an exponential moving average of the
        network's variables (batch norm's statistics included) with this decay per training
        step, warmed up as min(ema_decay, (1 + step) / (10 + step)), instead of the weights of
        the step itself; the average is checkpointed too. 0 turns it off (versions are the
        step's weights; nothing more is kept). Self-play, evaluation and reanalyse then see a
        network averaged over about 1 / (1 - ema_decay) steps, which smooths the step-to-step
        noise of the weights (docs/trainer.md).
      consistency_weight: factor (>= 0) of EfficientZero's self-supervised temporal
        consistency loss in the total loss; 0 turns it off (no projection heads, no unroll
        observations asked of the replay). EfficientZero uses 2.0. docs/trainer.md.
      projection_hidden_size: width of the two hidden layers of the consistency loss's
        projection head (hidden state, flattened -> [projection_hidden_size] x 2 ->
        [projection_size]); only built when consistency_weight > 0.
      projection_size: width of the projection (the vectors whose cosine similarity the
        consistency loss takes).
      prediction_hidden_size: width of the hidden layer of the consistency loss's prediction
        head ([projection_size] -> [prediction_hidden_size] -> [projection_size]).
      chance_loss_weight: factor (>= 0) of Stochastic MuZero's chance loss, the cross-entropy
        of the afterstates' predicted chance-code distribution against the encoder's code
        (only with network.chance_codes > 0; docs/trainer.md).
      commitment_weight: beta (>= 0), factor of Stochastic MuZero's commitment loss
        ||onehot - c^e||^2, which pulls the encoder's code distribution c^e towards its own
        argmax (VQ-VAE's 0.25 by default; only with network.chance_codes > 0).
      diversity_weight: factor (>= 0) of the diversity loss log C - H(mean code distribution
        of the batch), which keeps the encoder from collapsing onto one code (wav2vec 2.0's;
        not in the paper; only with network.chance_codes > 0).
    """

    num_unroll_steps: int = 5
    td_steps: int = 10
    value_prefix: bool = False
    value_prefix_horizon: int = 5
    value_prefix_lstm_size: int = 64
    batch_size: int = 256
    learning_rate: float = 3e-3
    lr_decay_steps: int = 10_000
    lr_decay_rate: float = 0.5
    weight_decay: float = 1e-4
    optimizer: Literal["adam", "sgd"] = "adam"
    augment_symmetries: bool = False
    export_interval: int = 100
    ema_decay: float = 0.0
    consistency_weight: float = 0.0
    projection_hidden_size: int = 256
    projection_size: int = 256
    prediction_hidden_size: int = 128
    chance_loss_weight: float = 1.0
    commitment_weight: float = 0.25
    diversity_weight: float = 0.1

    def __post_init__(self) -> None:
        for field in ("chance_loss_weight", "commitment_weight", "diversity_weight"):
            value = getattr(self, field)
            require(isinstance(value, numbers.Real) and not isinstance(value, bool)
                    and 0 <= value < float("inf"),
                    f"TrainingSettings.{field} must be a finite number >= 0, got {value!r}")
        _at_least(self, 1, "num_unroll_steps", "td_steps", "batch_size", "lr_decay_steps",
                  "export_interval", "value_prefix_horizon", "value_prefix_lstm_size")
        _at_least(self, 0, "weight_decay")
        require(isinstance(self.consistency_weight, numbers.Real)
                and not isinstance(self.consistency_weight, bool)
                and 0 <= self.consistency_weight < float("inf"),  # NaN fails too
                f"TrainingSettings.consistency_weight must be a finite number >= 0 (0 = off), "
                f"got {self.consistency_weight!r}")
        for field in ("projection_hidden_size", "projection_size", "prediction_hidden_size"):
            value = getattr(self, field)
            require(isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1,
                    f"TrainingSettings.{field} must be an int >= 1, got {value!r}")
        require(self.optimizer in ("adam", "sgd"),
                f"TrainingSettings.optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        require(self.learning_rate > 0,
                f"TrainingSettings.learning_rate must be > 0, got {self.learning_rate}")
        require(isinstance(self.ema_decay, numbers.Real) and not isinstance(self.ema_decay, bool)
                and 0.0 <= self.ema_decay < 1.0,  # NaN fails too
                f"TrainingSettings.ema_decay must be in [0, 1) (0 = off), got {self.ema_decay!r}")
        require(0.0 < self.lr_decay_rate <= 1.0,
                f"TrainingSettings.lr_decay_rate must be in (0, 1], got {self.lr_decay_rate}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FleetSettings:
    """How the fleet is sized around the game: defaults a deployment overrides.

    Attributes:
      games_per_batch: B, games one agent process plays at once (`--games-per-batch`).
    """

    games_per_batch: int = 256

    def __post_init__(self) -> None:
        _at_least(self, 1, "games_per_batch")


SECTIONS = {"network": NetworkSettings, "search": SearchSettings, "replay": ReplaySettings,
            "training": TrainingSettings, "fleet": FleetSettings}


def _section_of_field() -> dict[str, str]:
    owners: dict[str, str] = {}
    for section, cls in SECTIONS.items():
        for field in dataclasses.fields(cls):
            assert field.name not in owners, f"{field.name} is in two sections"
            owners[field.name] = section
    return owners


# field name -> the section that holds it (every field name is unique across sections).
SECTION_OF_FIELD = _section_of_field()


@dataclasses.dataclass(frozen=True, kw_only=True)
class MuZeroSettings:
    """A game's default MuZero settings, by section; every service reads its defaults here.

    Attributes:
      network: the networks.
      search: the search of every move.
      replay: the replay's storage and sampling.
      training: the targets and the optimizer.
      fleet: the fleet's size around the game.
      discount: per-move discount of targets and search; equals the game spec's discount.
    """

    network: NetworkSettings
    search: SearchSettings = SearchSettings()
    replay: ReplaySettings = ReplaySettings()
    training: TrainingSettings = TrainingSettings()
    fleet: FleetSettings = FleetSettings()
    discount: float = 0.997

    def __post_init__(self) -> None:
        for section, cls in SECTIONS.items():
            value = getattr(self, section)
            require(isinstance(value, cls),
                    f"MuZeroSettings.{section} must be a {cls.__name__}, got {value!r}")
        require(0.0 < self.discount <= 1.0, f"MuZeroSettings.discount must be in (0, 1], got {self.discount}")
        require(not (self.stochastic and self.training.value_prefix),
                "MuZeroSettings: network.chance_codes > 0 (Stochastic MuZero) and training.value_prefix "
                "cannot be combined (the value-prefix LSTM would have to run through afterstates)")
        require(self.search.search not in ("stochastic", "stochastic_gumbel") or self.stochastic,
                "MuZeroSettings: search 'stochastic' needs a model with chance codes: set "
                "network.chance_codes (the search then turns stochastic by itself)")

    @property
    def stochastic(self) -> bool:
        """Whether this is Stochastic MuZero (network.chance_codes > 0): the network has
        afterstates and a chance encoder (models/networks.py), the trainer their losses, and
        every search of its models the "stochastic" policy."""
        return self.network.chance_codes > 0

    def replace(self, **changes: Any) -> "MuZeroSettings":
        """A copy with `changes` applied and validated: whole sections (`search=...`), the
        discount, or fields of any section by their names (`num_simulations=32`), each found
        in the one section that holds it."""
        by_section: dict[str, dict[str, Any]] = {}
        own: dict[str, Any] = {}
        for name, value in changes.items():
            # "search" names a section and a field of it: a SearchSettings is the section.
            if name in SECTION_OF_FIELD and not (name in SECTIONS and isinstance(value, SECTIONS[name])):
                by_section.setdefault(SECTION_OF_FIELD[name], {})[name] = value
            elif name in SECTIONS or name == "discount":
                own[name] = value
            else:
                raise ValueError(f"MuZeroSettings has no section or field {name!r}")
        for section, fields in by_section.items():
            base = own.get(section, getattr(self, section))
            own[section] = dataclasses.replace(base, **fields)
        return dataclasses.replace(self, **own)

    @classmethod
    def of(cls, **fields: Any) -> "MuZeroSettings":
        """Settings from fields of any section by their names (the sections' defaults for the
        rest): `MuZeroSettings.of(architecture="fc", hidden_size=64, batch_size=32)`."""
        by_section: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
        own: dict[str, Any] = {}
        for name, value in fields.items():
            if name == "discount":
                own[name] = value
            elif name in SECTION_OF_FIELD:
                by_section[SECTION_OF_FIELD[name]][name] = value
            else:
                raise ValueError(f"MuZeroSettings has no field {name!r}")
        return cls(**{section: SECTIONS[section](**values) for section, values in by_section.items()}, **own)
