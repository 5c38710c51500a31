"""Config errors from a command line read as argparse errors naming the flag."""

from __future__ import annotations

import argparse

import pytest

from services.agent.config import AgentConfig
from services.common.flags import config_or_exit, flag_message


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agent")
    parser.add_argument("--games-per-batch", type=int, default=1)
    parser.add_argument("--groups", type=int, default=2)
    return parser


def test_flag_message_names_the_flags():
    message = "AgentConfig.groups must be in [1, games_per_batch=1], got 2"
    assert flag_message(_parser(), message) == "--groups must be in [1, --games-per-batch=1], got 2"


def test_fields_without_a_flag_keep_their_config_name():
    assert flag_message(_parser(), "AgentConfig.chunk_length must be >= 1, got 0") == \
        "AgentConfig.chunk_length must be >= 1, got 0"


def test_config_or_exit_is_a_usage_error(capsys):
    parser = _parser()
    args = parser.parse_args(["--games-per-batch", "1"])
    with pytest.raises(SystemExit) as exited:
        config_or_exit(parser, lambda: AgentConfig(
            game="cartpole", environment="127.0.0.1:1", network="127.0.0.1:2", replay="127.0.0.1:3",
            games_per_batch=args.games_per_batch, simulations=4, groups=args.groups))
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: agent") and "error: --groups must be in [1, --games-per-batch=1], got 2" in err
    assert "Traceback" not in err


def test_a_flag_spelled_like_its_field_is_named_once():
    parser = argparse.ArgumentParser(prog="network")
    parser.add_argument("--max_request_rows", type=int)
    assert flag_message(parser, "NetworkConfig.max_request_rows must be >= 1, got 0") == \
        "--max_request_rows must be >= 1, got 0"
    assert flag_message(parser, "rows over max_request_rows=4") == "rows over --max_request_rows=4"
