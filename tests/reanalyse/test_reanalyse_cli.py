"""The reanalyse worker's command line: every config error is an argparse error naming the flag
(exit 2), before anything starts or connects."""

from __future__ import annotations

import pytest

from services.reanalyse.__main__ import main, reanalyse_config

PEERS = ["--replay", "127.0.0.1:1", "--network", "127.0.0.1:2"]


def refused(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "usage: python -m services.reanalyse" in err and "Traceback" not in err
    return err


def test_flags_become_the_config():
    config = reanalyse_config(["--game", "tictactoe", *PEERS, "--batch-size", "64", "--order", "prioritized",
                               "--no-exploration", "--simulations", "12", "--seed", "5"])
    assert (config.batch_size, config.order, config.exploration, config.search_simulations, config.seed) == \
        (64, "prioritized", False, 12, 5)
    assert reanalyse_config(["--game", "cartpole", *PEERS]).seed is not None  # a fresh one


def test_bad_values_name_their_flag(capsys):
    assert "--batch-size must be >= 1, got 0" in refused(capsys, "--game", "cartpole", *PEERS, "--batch-size", "0")
    assert "--groups must be in [1, --batch-size=4], got 5" in refused(
        capsys, "--game", "cartpole", *PEERS, "--batch-size", "4", "--groups", "5")
    assert "invalid choice: 'random'" in refused(capsys, "--game", "cartpole", *PEERS, "--order", "random")
    assert "--replay must be host:port" in refused(capsys, "--game", "cartpole", "--replay", "nowhere",
                                                   "--network", "127.0.0.1:2")
