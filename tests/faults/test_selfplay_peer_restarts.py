"""Self-play survives its peers restarting: the network server (no game lost) and the
environment (the unfinished games are dropped, counted and logged; play goes on)."""

from __future__ import annotations

import pytest

from services.agent import metrics as agent_metrics
from services.replay.client import ReplayClient
from tests.faults.faults_helpers import (GAMES_PER_BATCH, address, events, free_port, metric, stop_agent,
                                   wait_until)

pytestmark = pytest.mark.integration

MOVES = agent_metrics.MOVES_TOTAL
ACKED = agent_metrics.RECORDS_ACKED_TOTAL


def test_network_server_restart_loses_no_game_and_self_play_goes_on(fleet):
    environment, replay = fleet.environment(), fleet.replay()
    network_port = free_port()
    network = fleet.network(network_port)
    agent = fleet.agent(environment.grpc_address, address(network_port), replay.grpc_address)
    with ReplayClient(replay.grpc_address, timeout_s=10) as client:
        wait_until(lambda: client.get_stats().games >= 4 and metric(agent, ACKED) >= 4,
                   "the agent's first games acknowledged by the replay", agent)

        network.kill()  # a crash: requests in flight get no answer
        wait_until(lambda: [e for e in events(agent, "peer_unavailable") if e["peer"] == "network"],
                   "the agent noticing the network server is gone", agent)
        fleet.network(network_port)  # the same address: the agent's channel reconnects
        moves_at_restart = metric(agent, MOVES)
        acked_at_restart = metric(agent, ACKED)
        wait_until(lambda: metric(agent, MOVES) >= moves_at_restart + 10 * GAMES_PER_BATCH
                   and metric(agent, ACKED) > acked_at_restart,
                   "moves and acknowledged games after the restart", agent)
        assert agent.poll() is None, agent.tail()
        acked_before_stop = metric(agent, ACKED)

        code, stopped = stop_agent(agent)
        stats = client.get_stats()
    assert code == 0 and stopped["unsent_records"] == 0, agent.tail()
    assert not events(agent, "session_lost"), "a network outage costs no game"
    # Every finished game is one record (chunks longer than a cartpole game), and every record
    # the agent made was stored: none lost, none stored twice.
    assert stopped["games_finished"] > 0
    assert stats.games_added_total == stats.games == stopped["games_finished"], (stats, stopped)
    assert stats.duplicates_total == 0
    assert acked_before_stop <= stats.games


def test_environment_restart_drops_only_unfinished_games_and_self_play_goes_on(fleet):
    replay, network = fleet.replay(), fleet.network()
    environment_port = free_port()
    environment = fleet.environment(environment_port)
    agent = fleet.agent(address(environment_port), network.grpc_address, replay.grpc_address)
    with ReplayClient(replay.grpc_address, timeout_s=10) as client:
        wait_until(lambda: client.get_stats().games >= 4 and metric(agent, ACKED) >= 4,
                   "the agent's first games acknowledged by the replay", agent)
        [first_session] = events(agent, "session_opened")

        environment.kill()  # its sessions die with it
        wait_until(lambda: [e for e in events(agent, "peer_unavailable") if e["peer"] == "environment"],
                   "the agent noticing the environment is gone", agent)
        fleet.environment(environment_port)
        [lost] = wait_until(lambda: events(agent, "session_lost"), "the agent's `session_lost` event", agent)
        assert lost["session_id"] == first_session["session_id"]
        # Game slots that had played a move when the session died (nearly all of them).
        assert 0 < lost["unfinished_games_dropped"] <= GAMES_PER_BATCH, lost
        opened = wait_until(lambda: events(agent, "session_opened")[1:], "a new session", agent)
        assert opened[0]["session_id"] != first_session["session_id"]

        moves_after = metric(agent, MOVES)
        finished_before = len(events(agent, "games_finished"))
        wait_until(lambda: metric(agent, MOVES) >= moves_after + 10 * GAMES_PER_BATCH
                   and len(events(agent, "games_finished")) > finished_before,
                   "moves and finished games in the new session", agent)
        assert agent.poll() is None, agent.tail()
        assert len(events(agent, "session_lost")) == 1

        code, stopped = stop_agent(agent)
        stats = client.get_stats()
    assert code == 0 and stopped["unsent_records"] == 0, agent.tail()
    # The dropped games were never sent; every game that finished was.
    assert stats.games_added_total == stats.games == stopped["games_finished"], (stats, stopped)
