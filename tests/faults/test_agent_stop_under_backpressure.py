"""SIGTERM reaches an agent whose replay is down and whose self-play is paused by back-pressure:
it still exits within its grace period, says how many records stayed unsent, and exits non-zero."""

from __future__ import annotations

import signal
import time

import pytest

from services.agent import metrics as agent_metrics
from tests.faults.faults_helpers import address, events, free_port, metric, wait_until

pytestmark = pytest.mark.integration

MAX_PENDING = 2
STOP_GRACE_S = 5
# What the deployment allows between SIGTERM and SIGKILL (docker-compose's stop_grace_period):
# the agent, giving its records STOP_GRACE_S to reach the replay, must be gone well before.
DEPLOYMENT_GRACE_S = 30


def test_agent_stopped_while_back_pressured_by_a_dead_replay_exits_in_its_grace_period(fleet):
    environment, network = fleet.environment(), fleet.network()
    replay_port = free_port()
    replay = fleet.replay(replay_port)
    agent = fleet.agent(environment.grpc_address, network.grpc_address, address(replay_port),
                        "--max-pending-records", str(MAX_PENDING), "--stop-grace-s", str(STOP_GRACE_S))
    wait_until(lambda: metric(agent, agent_metrics.RECORDS_ACKED_TOTAL) >= 1,
               "a first record acknowledged by the replay", agent)

    replay.kill()
    wait_until(lambda: events(agent, "replay_add_failed"), "AddGames failing", agent)
    # Pending records reach the limit; the next put then waits for acks that cannot come.
    wait_until(lambda: metric(agent, agent_metrics.RECORDS_PENDING) >= MAX_PENDING,
               f"{MAX_PENDING} records pending", agent)

    def self_play_paused() -> bool:
        moves = metric(agent, agent_metrics.MOVES_TOTAL)
        time.sleep(2.0)  # a move of 16 games with 4 simulations takes far less (the state is polled)
        return metric(agent, agent_metrics.MOVES_TOTAL) == moves

    wait_until(self_play_paused, "self-play paused by back-pressure", agent)
    assert agent.poll() is None, agent.tail()

    agent.signal(signal.SIGTERM)
    try:
        code = agent.wait(DEPLOYMENT_GRACE_S)
    except TimeoutError:
        pytest.fail(f"the agent did not exit within {DEPLOYMENT_GRACE_S}s of SIGTERM (its own "
                    f"grace is {STOP_GRACE_S}s):\n{agent.tail()}")
    final = list(agent.events)[-1]
    assert final["event"] == "stopped", f"the final log line is `stopped`:\n{agent.tail()}"
    assert final["unsent_records"] >= MAX_PENDING, final
    assert code == 1, f"records stayed unsent: exit code 1, got {code}\n{agent.tail()}"
