"""Presets (services/launcher/presets.py): each one's settings reach the services that own them,
as flags those services take, and give the configs the preset promises."""

from __future__ import annotations

from pathlib import Path

import pytest

import games
from services.launcher.presets import PRESETS, Preset, preset
from services.launcher.topology import FleetConfig, build_topology
from services.replay.__main__ import parse_args as replay_config
from services.trainer.__main__ import parse_args as trainer_config


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("game", ["cartpole", "tictactoe"])
def test_a_presets_flags_give_the_services_its_settings(name, game, tmp_path):
    chosen = preset(name)
    expected = chosen.game_settings(game)
    flags = chosen.service_flags(game)
    replay = replay_config(["--game", game, "--data-dir", str(tmp_path / "replay"), *flags.get("replay", ())])
    trainer = trainer_config(["--game", game, "--replay", "127.0.0.1:1", "--models", str(tmp_path / "m"),
                              "--checkpoint-dir", str(tmp_path / "c"), *flags.get("trainer", ())])
    for field in ("samples_per_insert", "min_positions", "reanalysed_target_fraction", "td_age_versions_per_step",
                  "block_inserts"):
        assert getattr(replay, field) == getattr(expected.replay, field), field
    assert trainer.settings.training == expected.training


def test_the_sample_efficient_fleet_runs_its_reanalyser_and_small_batches():
    specs = {s.name: s for s in build_topology(FleetConfig(game="cartpole", run_dir=Path("r"),
                                                           preset="sample-efficient"))}
    assert "reanalyse-0" in specs
    agent = specs["agent-0"].args
    assert agent[agent.index("--games-per-batch") + 1] == "16"
    assert "--block-inserts" in specs["replay"].args
    assert "--consistency-weight" in specs["trainer"].args
    # What the launcher is given wins over the preset.
    given = {s.name: s for s in build_topology(FleetConfig(game="cartpole", run_dir=Path("r"), preset="sample-efficient",
                                                           games_per_batch=64, num_reanalysers=2))}
    assert given["agent-0"].args[given["agent-0"].args.index("--games-per-batch") + 1] == "64"
    assert "reanalyse-1" in given
    # No preset: the game's defaults, no flags added.
    plain = {s.name: s for s in build_topology(FleetConfig(game="cartpole", run_dir=Path("r")))}
    assert plain["replay"].args[:4] == ("--game", "cartpole", "--data-dir", "r/replay")
    assert "--consistency-weight" not in plain["trainer"].args and "reanalyse-0" not in plain


def test_bad_presets_are_refused_naming_what_is_wrong():
    with pytest.raises(ValueError, match="no settings field 'samples_per_inserts'"):
        Preset("x", "", settings={"samples_per_inserts": 2.0})
    with pytest.raises(ValueError, match="search.num_simulations is not a flag of the replay, the trainer or the searchers"):
        Preset("x", "", settings={"num_simulations": 4})
    with pytest.raises(ValueError, match="training.num_unroll_steps is not a flag"):
        Preset("x", "", settings={"num_unroll_steps": 3})  # the replay and the trainer would disagree
    with pytest.raises(ValueError, match="samples_per_insert must be >= 0"):
        Preset("x", "", settings={"samples_per_insert": -1.0}).service_flags("cartpole")
    with pytest.raises(ValueError, match="no preset 'fast'"):
        preset("fast")
    with pytest.raises(ValueError, match="FleetConfig.preset must be one of"):
        FleetConfig(game="cartpole", run_dir=Path("r"), preset="fast")
    assert games.make("cartpole").settings == preset("").game_settings("cartpole")


def test_changes_to_a_preset_turn_one_option_off():
    config = FleetConfig(game="cartpole", run_dir=Path("r"), preset="sample-efficient",
                         preset_changes=(("consistency_weight", 0.0), ("reanalysers", 0)))
    specs = {s.name: s for s in build_topology(config)}
    trainer = specs["trainer"].args
    assert trainer[trainer.index("--consistency-weight") + 1] == "0.0"
    assert "reanalyse-0" not in specs and "--block-inserts" in specs["replay"].args
    with pytest.raises(ValueError, match="samples_per_insert must be >= 0"):
        FleetConfig(game="cartpole", run_dir=Path("r"), preset="sample-efficient",
                    preset_changes=(("samples_per_insert", -2.0),))


def test_value_prefix_reaches_the_replay_and_the_trainer_together(tmp_path):
    chosen = preset("sample-efficient").with_changes({"value_prefix": True, "value_prefix_horizon": 3})
    flags = chosen.service_flags("cartpole")
    for node in ("replay", "trainer"):
        assert "--value-prefix" in flags[node] and flags[node][flags[node].index("--value-prefix-horizon") + 1] == "3"
    replay = replay_config(["--game", "cartpole", "--data-dir", str(tmp_path / "replay"), *flags["replay"]])
    trainer = trainer_config(["--game", "cartpole", "--replay", "127.0.0.1:1", "--models", str(tmp_path / "m"),
                              "--checkpoint-dir", str(tmp_path / "c"), *flags["trainer"]])
    assert replay.value_prefix and replay.value_prefix_horizon == 3
    assert trainer.settings.training.value_prefix and trainer.settings.training.value_prefix_horizon == 3



def test_chance_codes_reach_the_trainer_alone(tmp_path):
    """Stochastic MuZero is the trainer's to build; every searcher reads C from the model."""
    chosen = preset("").with_changes({"chance_codes": 6, "commitment_weight": 0.5})
    flags = chosen.service_flags("cartpole")
    assert set(flags) == {"trainer"}
    trainer = trainer_config(["--game", "cartpole", "--replay", "127.0.0.1:1", "--models", str(tmp_path / "m"),
                              "--checkpoint-dir", str(tmp_path / "c"), *flags["trainer"]])
    assert trainer.settings.network.chance_codes == 6 and trainer.stochastic and trainer.unroll_observations
    assert trainer.settings.training.commitment_weight == 0.5
    specs = {s.name: s for s in build_topology(FleetConfig(game="cartpole", run_dir=Path("r"),
                                                           preset_changes=(("chance_codes", 6),)))}
    assert "--chance-codes" in specs["trainer"].args
    assert all("--chance-codes" not in spec.args for name, spec in specs.items() if name != "trainer")
    with pytest.raises(ValueError, match="network.support_size is not a flag"):
        Preset("x", "", settings={"support_size": 8})


def test_network_size_reaches_the_trainer_alone(tmp_path):
    """A smaller network (an ablation of Connect Four's cost per step) is the trainer's to build:
    the agents, evaluator and reanalysers take the hidden state's shape from the model. So is
    training under the board's symmetries."""
    chosen = preset("").with_changes({"hidden_size": 32, "res_blocks": 1, "augment_symmetries": True})
    flags = chosen.service_flags("connect4")
    assert flags == {"trainer": ("--hidden-size", "32", "--res-blocks", "1", "--augment-symmetries")}
    trainer = trainer_config(["--game", "connect4", "--replay", "127.0.0.1:1", "--models", str(tmp_path / "m"),
                              "--checkpoint-dir", str(tmp_path / "c"), *flags["trainer"]])
    network = trainer.settings.network
    assert (network.hidden_size, network.res_blocks, network.architecture) == (32, 1, "resnet")
    assert trainer.settings.training.augment_symmetries and len(trainer.symmetries.cells) == 2  # the mirror
    plain = trainer_config(["--game", "connect4", "--replay", "127.0.0.1:1", "--models", str(tmp_path / "m"),
                            "--checkpoint-dir", str(tmp_path / "c")])
    assert plain.symmetries is None
    with pytest.raises(SystemExit):  # the section's own check, named as the flag
        trainer_config(["--game", "connect4", "--replay", "127.0.0.1:1", "--models", str(tmp_path / "m"),
                        "--checkpoint-dir", str(tmp_path / "c"), "--hidden-size", "0"])


def test_search_fields_reach_every_searcher_and_their_searches(tmp_path):
    """rescale_values changes the targets (self-play, reanalysis) and the ratings (evaluator):
    all three are told, and each one's search runs with it."""
    from services.agent.__main__ import agent_config, parse_command_line
    from services.agent.search.config import SEARCHER_OVERRIDES
    from services.evaluator.__main__ import build_parser as evaluator_parser
    from services.evaluator.__main__ import evaluator_config
    from services.evaluator.config import EvaluatorConfig
    from services.reanalyse.__main__ import reanalyse_config
    from services.reanalyse.config import ReanalyseConfig

    assert SEARCHER_OVERRIDES == ("rescale_values",)
    assert games.make("connect4").settings.search.rescale_values  # the default the change turns off
    chosen = preset("").with_changes({"rescale_values": False})
    flags = chosen.service_flags("connect4")
    assert flags == {node: ("--no-rescale-values",) for node in ("agent", "reanalyse", "evaluator")}
    specs = {s.name: s for s in build_topology(FleetConfig(game="connect4", run_dir=Path("r"), num_reanalysers=1,
                                                           evaluator=True, preset_changes=(("rescale_values", False),)))}
    for name in ("agent-0", "reanalyse-0", "evaluator"):
        assert "--no-rescale-values" in specs[name].args, name
    assert all("--no-rescale-values" not in spec.args for name, spec in specs.items()
               if name not in ("agent-0", "reanalyse-0", "evaluator"))

    parser, args = parse_command_line(["--game", "connect4", "--environment", "127.0.0.1:1", "--network",
                                       "127.0.0.1:2", "--replay", "127.0.0.1:3", *flags["agent"]])
    assert agent_config(parser, args).rescale_values is False
    parser, args = parse_command_line(["--game", "connect4", "--environment", "127.0.0.1:1", "--network",
                                       "127.0.0.1:2", "--replay", "127.0.0.1:3"])
    assert agent_config(parser, args).rescale_values is None  # unset: the game's
    evaluator = evaluator_parser().parse_args(["--game", "connect4", "--network", "127.0.0.1:2", "--environment",
                                               "127.0.0.1:1", "--state-dir", str(tmp_path), *flags["evaluator"]])
    assert evaluator.rescale_values is False
    assert evaluator_config(["--game", "connect4", "--network", "127.0.0.1:2", "--environment", "127.0.0.1:1",
                             "--state-dir", str(tmp_path), *flags["evaluator"]]).rescale_values is False
    assert reanalyse_config(["--game", "connect4", "--replay", "127.0.0.1:1", "--network", "127.0.0.1:2",
                             *flags["reanalyse"]]).rescale_values is False
    assert reanalyse_config(["--game", "connect4", "--replay", "127.0.0.1:1",
                             "--network", "127.0.0.1:2"]).rescale_values is None
    assert EvaluatorConfig(game="connect4", network="a:1", environment="b:2", state_dir=str(tmp_path),
                           rescale_values=False).rescale_values is False
    assert ReanalyseConfig(game="connect4", replay="a:1", network="b:2", rescale_values=False).rescale_values is False


def test_self_play_exploration_reaches_the_agents_alone():
    """random_opening_moves, random_branch_probability/_plies and gumbel_scale choose which games
    self-play plays: the agent is told, and neither the reanalyser nor the evaluator (whose
    searches make targets and ratings)."""
    from services.agent.__main__ import agent_config, parse_command_line

    changes = {"gumbel_scale": 2.0, "random_opening_moves": 1, "random_branch_probability": 0.5,
               "random_branch_plies": 4}
    chosen = preset("").with_changes(changes)
    flags = chosen.service_flags("tictactoe")
    assert flags == {"agent": ("--gumbel-scale", "2.0", "--random-opening-moves", "1",
                               "--random-branch-probability", "0.5", "--random-branch-plies", "4")}
    specs = {s.name: s for s in build_topology(FleetConfig(
        game="tictactoe", run_dir=Path("r"), num_reanalysers=1, evaluator=True,
        preset_changes=tuple(changes.items())))}
    assert "--gumbel-scale" in specs["agent-0"].args and "--random-branch-plies" in specs["agent-0"].args
    assert all(flag not in spec.args for name, spec in specs.items() if name != "agent-0"
               for flag in ("--gumbel-scale", "--random-opening-moves", "--random-branch-probability",
                            "--random-branch-plies"))
    parser, args = parse_command_line(["--game", "tictactoe", "--environment", "127.0.0.1:1", "--network",
                                       "127.0.0.1:2", "--replay", "127.0.0.1:3", *flags["agent"]])
    config = agent_config(parser, args)
    assert (config.gumbel_scale, config.random_opening_moves) == (2.0, 1)
    assert (config.random_branch_probability, config.random_branch_plies) == (0.5, 4)
