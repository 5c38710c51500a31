"""The agent's command line: every config error is an argparse error naming the flag (exit 2),
before anything starts or connects."""

from __future__ import annotations

import pytest

from services.agent.__main__ import agent_config, build_parser, main

PEERS = ["--environment", "127.0.0.1:1", "--network", "127.0.0.1:2"]


def refused(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "usage: python -m services.agent" in err and "Traceback" not in err
    return err


def test_the_default_is_one_group_and_a_given_one_is_kept():
    parser = build_parser()
    for games_per_batch in ("1", "8"):
        args = parser.parse_args(["--game", "cartpole", *PEERS, "--replay", "127.0.0.1:3",
                                  "--games-per-batch", games_per_batch, "--seed", "0"])
        assert agent_config(parser, args).groups == 1
    args = parser.parse_args(["--game", "cartpole", *PEERS, "--replay", "127.0.0.1:3",
                              "--games-per-batch", "8", "--groups", "4", "--seed", "0"])
    assert agent_config(parser, args).groups == 4


def test_groups_above_games_per_batch_names_both_flags(capsys):
    err = refused(capsys, "--game", "cartpole", *PEERS, "--replay", "127.0.0.1:3",
                  "--games-per-batch", "1", "--groups", "2")
    assert "error: --groups must be in [1, --games-per-batch=1], got 2" in err


def test_self_play_flags_are_checked(capsys):
    assert "--replay is required for self-play" in refused(capsys, "--game", "cartpole", *PEERS)
    assert "--stop-grace-s must be > 0, got 0.0" in refused(
        capsys, "--game", "cartpole", *PEERS, "--replay", "127.0.0.1:3", "--stop-grace-s", "0")
    assert "--version applies to evaluation only" in refused(
        capsys, "--game", "cartpole", *PEERS, "--replay", "127.0.0.1:3", "--version", "3")


def test_unsupported_evaluation_combinations_are_refused(capsys):
    err = refused(capsys, "--game", "connect4", *PEERS, "--evaluate", "4", "--opponent", "minimax")
    assert "error: --opponent 'minimax' plays tictactoe only, got --game 'connect4'" in err
    err = refused(capsys, "--game", "cartpole", *PEERS, "--evaluate", "4", "--opponent", "random")
    assert "--opponent 'random' needs a two-player game" in err
    for flag, value in (("--gumbel-scale", "2"), ("--random-opening-moves", "1"),
                        ("--random-branch-probability", "0.5"), ("--random-branch-plies", "3")):
        err = refused(capsys, "--game", "tictactoe", *PEERS, "--evaluate", "4", flag, value)
        assert f"error: {flag} applies to self-play only, not to --evaluate" in err
    assert "--evaluate must be >= 1, got -2" in refused(capsys, "--game", "cartpole", *PEERS, "--evaluate", "-2")
    assert "--version must be >= 0, got -1" in refused(
        capsys, "--game", "cartpole", *PEERS, "--evaluate", "2", "--version", "-1")


def test_the_ladder_opponents_are_offered_and_refused_where_they_do_not_fit(capsys):
    from services.agent.opponents import OPPONENTS
    parser = build_parser()
    opponent = next(a for a in parser._actions if a.dest == "opponent")
    assert list(opponent.choices) == list(OPPONENTS)
    assert {"random", "minimax", "mcts100", "mcts1000", "alphabeta"} <= set(OPPONENTS)
    err = refused(capsys, "--game", "tictactoe", *PEERS, "--evaluate", "4", "--opponent", "alphabeta")
    assert "error: --opponent 'alphabeta' plays connect4 only, got --game 'tictactoe'" in err
    err = refused(capsys, "--game", "cartpole", *PEERS, "--evaluate", "4", "--opponent", "mcts100")
    assert "--opponent 'mcts100' needs a two-player game" in err
    err = refused(capsys, "--game", "2048", *PEERS, "--evaluate", "4", "--opponent", "mcts1000")
    assert "--opponent 'mcts1000' needs a two-player game" in err
    err = refused(capsys, "--game", "othello", *PEERS, "--evaluate", "4", "--opponent", "mcts10")
    assert "argument --opponent: invalid choice: 'mcts10'" in err


def test_the_ladder_opponents_are_accepted_where_they_fit():
    from services.agent.__main__ import evaluation_config
    parser = build_parser()
    for game, opponent in (("othello", "mcts100"), ("tictactoe", "mcts1000"), ("connect4", "alphabeta"),
                           ("connect4", "mcts100")):
        args = parser.parse_args(["--game", game, *PEERS, "--evaluate", "4", "--opponent", opponent,
                                  "--seed", "0"])
        assert evaluation_config(parser, args).opponent_name == opponent
