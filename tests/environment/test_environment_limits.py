"""The environment server's message limits and its command line: sizes derived from the
largest legitimate messages, flags that name themselves in errors."""

from __future__ import annotations

import numpy as np
import pytest

import games
from environment_helpers import loadable_games, random_legal_actions
from protos import environment_pb2
from services.common.processes import ServiceProcess
from services.common.tensors import to_tensor
from services.environment.__main__ import parse_args, parse_command_line
from services.environment.client import EnvironmentClient
from services.environment.config import EnvironmentConfig
from services.environment.limits import (GRPC_MAX_MESSAGE_BYTES, REQUEST_SLACK_BYTES,
                                         largest_fitting, loadable_specs, message_limits,
                                         request_bytes, response_bytes)
from services.environment.sessions import Session
from services.environment.wire import spec_to_proto, time_step_to_proto

GAMES = loadable_games()
SESSION_ID = "6a0f3b1e-0000-4000-8000-000000000000"


@pytest.mark.parametrize("name", GAMES)
@pytest.mark.parametrize("num_games", [1, 7, 300, 4096])
def test_response_bound_holds_the_real_open_response_and_is_tight(name, num_games):
    game = games.make(name)
    session = Session(SESSION_ID, name, game, num_games, seed=0, now=0.0)
    response = environment_pb2.OpenResponse(session_id=session.id, spec=spec_to_proto(game.spec),
                                            time_step=time_step_to_proto(session.time_step()))
    response.time_step.num_steps = 2**62  # the longest a step count gets on the wire
    exact = response.ByteSize()
    bound = response_bytes(game.spec, num_games)
    assert exact <= bound <= exact + 256


@pytest.mark.parametrize("num_games", [1, 9, 1000, 65536])
def test_request_bound_holds_the_largest_step_and_reset(num_games):
    step = environment_pb2.StepRequest(session_id=SESSION_ID, auto_reset=True,
                                       actions=to_tensor(np.full(num_games, -(2**62), np.int64)))
    reset = environment_pb2.ResetRequest(session_id=SESSION_ID, game_indices=range(num_games))
    largest = max(step.ByteSize(), reset.ByteSize())
    assert largest <= request_bytes(num_games) <= largest + 64


def test_default_limits():
    """65536 games of 2048 (1024 bytes of observations a game) are the largest response; a Step
    of 65536 int64 actions the largest request."""
    limits = message_limits(EnvironmentConfig())
    assert limits.largest_game == "2048"
    assert 65536 * 1038 <= limits.max_send_bytes <= 65536 * 1038 + 512  # 68.0 MB
    assert 65536 * 8 + REQUEST_SLACK_BYTES <= limits.max_receive_bytes <= 65536 * 8 + REQUEST_SLACK_BYTES + 128
    small = message_limits(EnvironmentConfig(max_games_per_session=64), [games.make("cartpole").spec])
    assert small.largest_game == "cartpole" and 64 * 28 <= small.max_send_bytes <= 64 * 28 + 512


def test_sessions_too_large_for_one_message_are_a_config_error():
    specs = loadable_specs()
    fitting = largest_fitting(specs)
    assert max(response_bytes(spec, fitting) for spec in specs) <= GRPC_MAX_MESSAGE_BYTES
    assert max(response_bytes(spec, fitting + 1) for spec in specs) > GRPC_MAX_MESSAGE_BYTES
    too_many = EnvironmentConfig(max_games_per_session=fitting + 1, max_total_games=fitting + 1)
    with pytest.raises(ValueError, match=f"max_games_per_session={fitting + 1} makes a time step "
                                         f"of .* over gRPC's limit .* at most {fitting} games"):
        message_limits(too_many, specs)
    message_limits(EnvironmentConfig(max_games_per_session=fitting, max_total_games=fitting), specs)


@pytest.mark.parametrize("argv, words", [
    (["--max-sessions", "0"], "--max-sessions must be >= 1, got 0"),
    (["--max-total-games", "0"], "--max-total-games must be >= 1, got 0"),
    (["--max-games-per-session", "100", "--max-total-games", "10"],
     "--max-games-per-session must be <= --max-total-games=10, got 100"),
    (["--port", "70000"], "--port must be in [0, 65535], got 70000"),
    (["--session-timeout-s", "0"], "--session-timeout-s must be > 0, got 0"),
    (["--max-games-per-session", str(2**31)], "--max-games-per-session must be <= 2147483647"),
])
def test_bad_flags_are_argparse_errors_naming_the_flag(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    stderr = capsys.readouterr().err
    assert words in stderr and "Config" not in stderr, stderr
    assert stderr.startswith("usage: python -m services.environment")


def test_sessions_too_large_for_one_message_are_a_flag_error(capsys):
    games_ = str(2**31 - 1)
    with pytest.raises(SystemExit) as exit_:
        parse_command_line(["--max-games-per-session", games_, "--max-total-games", games_])
    assert exit_.value.code == 2
    stderr = capsys.readouterr().err
    assert f"--max-games-per-session={games_} makes a time step of 2048" in stderr, stderr


def test_flags_build_the_config_and_its_limits():
    config, limits = parse_command_line(["--max-games-per-session", "10", "--max-total-games", "25",
                                         "--port", "0", "--metrics-port", "0"])
    assert (config.max_games_per_session, config.max_total_games) == (10, 25)
    assert limits == message_limits(config)


@pytest.mark.integration
@pytest.mark.skipif("2048" not in GAMES, reason="2048 does not load")
def test_the_largest_legitimate_messages_pass_at_the_limits(tmp_path):
    """A server sized for 300 games a session answers an Open of 300 games of 2048 (its largest
    response) and a Step of 300 int64 actions (its largest request), and refuses one byte more
    than its receive limit."""
    B = 300
    process = ServiceProcess("services.environment", [
        "--game", "2048", "--port", "0", "--metrics-port", "0", "--max-games-per-session", str(B)],
        log_path=tmp_path / "environment.log")
    with process:
        process.wait_ready(60)
        expected = message_limits(EnvironmentConfig(game="2048", max_games_per_session=B))
        assert process.ready["max_send_bytes"] == expected.max_send_bytes
        assert process.ready["max_receive_bytes"] == expected.max_receive_bytes
        with EnvironmentClient(process.grpc_address, timeout_s=30) as env:
            session, _, time_step = env.open("2048", B, seed=0)
            assert time_step.observation.shape == (B, 4, 4, 16)
            actions = random_legal_actions(np.random.default_rng(0), time_step.legal_actions)
            time_step = env.step(session, actions.astype(np.int64), auto_reset=True)
            assert time_step.num_steps == 1
            env.close(session)
