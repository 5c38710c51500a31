"""The evaluator's command line: flags become the config, and every config error is an
argparse error naming the flag (exit 2), before anything starts or connects."""

from __future__ import annotations

import pytest

from services.evaluator.__main__ import evaluator_config, main

PEERS = ["--network", "127.0.0.1:1", "--environment", "127.0.0.1:2"]


def refused(capsys, tmp_path, *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--state-dir", str(tmp_path)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "usage: python -m services.evaluator" in err and "Traceback" not in err
    return err


def test_flags_become_the_config(tmp_path):
    config = evaluator_config(["--game", "connect4", *PEERS, "--state-dir", str(tmp_path), "--ladder",
                               "random,alphabeta", "--games-per-match", "8", "--simulations", "12",
                               "--models", "m", "--anchor-every", "500", "--max-anchors", "2",
                               "--metrics-port", "0"])
    assert (config.opponents, config.games_per_match, config.search_simulations, config.models,
            config.anchor_every, config.max_anchors, config.metrics_port) == \
        (("random", "alphabeta"), 8, 12, "m", 500, 2, 0)
    default = evaluator_config(["--game", "tictactoe", *PEERS, "--state-dir", str(tmp_path)])
    assert default.opponents == ("random", "minimax", "mcts100") and default.metrics_port == 9106


def test_bad_values_name_their_flag(capsys, tmp_path):
    assert "--games-per-match must be even in a two-player game" in refused(
        capsys, tmp_path, "--game", "tictactoe", *PEERS, "--games-per-match", "3")
    assert "--ladder: opponent 'alphabeta' cannot play othello" in refused(
        capsys, tmp_path, "--game", "othello", *PEERS, "--ladder", "alphabeta")
    assert "--ladder must be empty for the one-player game cartpole" in refused(
        capsys, tmp_path, "--game", "cartpole", *PEERS, "--ladder", "random")
    assert "--anchor-every must be >= 1, got 0" in refused(
        capsys, tmp_path, "--game", "tictactoe", *PEERS, "--anchor-every", "0")
    assert "--environment must be host:port" in refused(
        capsys, tmp_path, "--game", "tictactoe", "--network", "127.0.0.1:1", "--environment", "nowhere")
