"""The trainer's command line: config errors are argparse errors naming the flag (exit 2)."""

from __future__ import annotations

import pytest

from services.trainer.__main__ import parse_args

BASE = ["--game", "cartpole", "--replay", "127.0.0.1:1", "--models", "m", "--checkpoint-dir", "c"]


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--learning-rate", "-1"], "--learning-rate must be > 0, got -1.0"),
    (["--prefetch", "0"], "--prefetch must be >= 1, got 0"),
    (["--sample-timeout", "0"], "--sample-timeout must be > 0, got 0.0"),
    (["--keep-versions", "0"], "--keep-versions must be >= 1, got 0"),
    (["--metrics-port", "70000"], "--metrics-port must be in [0, 65535], got 70000"),
])
def test_config_errors_name_the_flag(capsys, flags, message):
    with pytest.raises(SystemExit) as exited:
        parse_args(BASE + flags)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {message}" in err and "Traceback" not in err and "Config." not in err


def test_a_bad_replay_address_names_the_flag(capsys):
    args = ["--game", "cartpole", "--replay", "nowhere", "--models", "m", "--checkpoint-dir", "c"]
    with pytest.raises(SystemExit):
        parse_args(args)
    assert "error: --replay must be host:port, got 'nowhere'" in capsys.readouterr().err


def test_flags_reach_the_config():
    config = parse_args(BASE + ["--prefetch", "7", "--sample-timeout", "2.5", "--batch-size", "12",
                                "--lr-decay-steps", "77", "--lr-decay-rate", "0.25"])
    assert config.prefetch_batches == 7 and config.sample_timeout_s == 2.5
    assert (config.settings.training.lr_decay_steps, config.settings.training.lr_decay_rate) == (77, 0.25)
    assert config.settings.training.batch_size == 12 and config.replay_address == "127.0.0.1:1"
    assert config.models_dir == "m" and config.checkpoint_dir == "c"
