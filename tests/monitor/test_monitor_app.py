"""The monitor's app against real services (started as processes on loopback), through Flask's
test client, and the `python -m monitor` process itself."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest

import games
from games import g2048
from monitor import metrics as monitor_metrics
from monitor.app import create_app
from monitor.config import MetricsTarget, MonitorConfig
from services.agent import metrics as agent_metrics
from services.common.logs import get_logger
from tests.monitor.conftest import MetricsPage, closed_port, http_get, http_json

pytestmark = pytest.mark.integration


def monitor_client(**config):
    app = create_app(MonitorConfig(**config), get_logger("monitor", stream=io.StringIO()))
    scraper = app.extensions["mufleet"]["scraper"]
    return app.test_client(), scraper


def metrics_address(process) -> str:
    return f"127.0.0.1:{process.ready['metrics_port']}"


def test_fleet_shows_real_services_up(start_service, tmp_path):
    environment = start_service("services.environment", ["--game", "tictactoe"])
    replay = start_service("services.replay", ["--game", "tictactoe", "--data-dir", str(tmp_path / "replay")])
    client, scraper = monitor_client(
        game="tictactoe", environment=environment.grpc_address, replay=replay.grpc_address,
        metrics=(MetricsTarget("environment", metrics_address(environment)),
                 MetricsTarget("replay", metrics_address(replay))))
    scraper.scrape_once()
    scraper.scrape_once()
    fleet = client.get("/api/fleet").get_json()
    by_name = {s["name"]: s for s in fleet["services"]}
    assert set(by_name) == {"environment", "replay"}
    for name in ("environment", "replay"):
        assert by_name[name]["status"] == "up", by_name[name]
        assert by_name[name]["grpc"]["status"] == "SERVING"
        assert by_name[name]["instances"][0]["up"] is True
    assert fleet["errors"] == [] and fleet["up"] == fleet["total"] == 2
    replay_stats = client.get("/api/replay")
    assert replay_stats.status_code == 200 and replay_stats.get_json()["stats"]["game"] == "tictactoe"
    series = client.get("/api/series").get_json()
    assert len(series["time"]) == 2
    assert series["series"]["replay_positions"] == [0, 0]
    page = client.get("/").data.decode()
    assert "2/2 services up" in page and environment.grpc_address in page


def test_unreachable_services_are_named_not_an_error_page(start_service):
    environment = start_service("services.environment", ["--game", "tictactoe"])
    replay_port, replay_metrics, network_port = closed_port(), closed_port(), closed_port()
    client, scraper = monitor_client(
        game="tictactoe", environment=environment.grpc_address, replay=f"127.0.0.1:{replay_port}",
        network=f"127.0.0.1:{network_port}",
        metrics=(MetricsTarget("environment", metrics_address(environment)),
                 MetricsTarget("replay", f"127.0.0.1:{replay_metrics}")), scrape_timeout_s=1.0)
    scraper.scrape_once()
    page = client.get("/")
    assert page.status_code == 200
    text = page.data.decode()
    assert f"replay unreachable at 127.0.0.1:{replay_port}" in text
    assert f"replay metrics unreachable at 127.0.0.1:{replay_metrics}/metrics" in text
    fleet = client.get("/api/fleet")
    assert fleet.status_code == 200
    body = fleet.get_json()
    by_name = {s["name"]: s for s in body["services"]}
    assert by_name["environment"]["status"] == "up"
    assert by_name["replay"]["status"] == "down"
    assert any(f"replay unreachable at 127.0.0.1:{replay_port}" in e for e in body["errors"])
    replay = client.get("/api/replay")
    assert replay.status_code == 503
    assert f"replay unreachable at 127.0.0.1:{replay_port}" in replay.get_json()["error"]
    # The play page: the move is legal, but the model cannot answer.
    answer = client.post("/api/play", json={"board": [[0] * 3] * 3, "move": 4, "model_player": 1})
    assert answer.status_code == 503
    assert f"network unreachable at 127.0.0.1:{network_port}" in answer.get_json()["error"]


def test_an_optional_service_not_running_is_off_not_down(start_service, tmp_path):
    """compose's optional profiles (--optional-metrics): an evaluator that was never started is
    "off", raises no alert and is not counted; once it answers it is a service like the others."""
    environment = start_service("services.environment", ["--game", "tictactoe"])
    evaluator_metrics_port = closed_port()
    client, scraper = monitor_client(
        game="tictactoe", environment=environment.grpc_address,
        metrics=(MetricsTarget("environment", metrics_address(environment)),
                 MetricsTarget.parse(f"evaluator=127.0.0.1:{evaluator_metrics_port}", optional=True),
                 MetricsTarget.parse(f"reanalyse={metrics_address(environment)}", optional=True)),
        scrape_timeout_s=1.0)
    scraper.scrape_once()
    body = client.get("/api/fleet").get_json()
    by_name = {s["name"]: s for s in body["services"]}
    assert by_name["evaluator"]["status"] == "off" and by_name["evaluator"]["messages"] == []
    assert f"evaluator metrics unreachable at 127.0.0.1:{evaluator_metrics_port}" in by_name["evaluator"]["note"]
    assert body["errors"] == [] and (body["up"], body["total"]) == (2, 2)
    assert by_name["reanalyse"]["status"] == "up", "an optional service that answers is up"
    page = client.get("/").data.decode()
    assert 'data-service="evaluator"' in page and "optional: not running" in page
    with pytest.raises(ValueError, match="--optional-metrics must be NAME=HOST:PORT"):
        MetricsTarget.parse("evaluator", optional=True)


@pytest.mark.parametrize("game", ["tictactoe", "connect4"])
def test_play_against_a_served_model(model_network, game):
    network = model_network(game)
    client, _ = monitor_client(game=game, network=network.grpc_address, play_simulations=8)
    info = client.get("/api/play").get_json()
    assert info["playable"] and info["game"] == game
    rules = games.make(game)
    board = np.zeros((info["rows"], info["cols"]), int).tolist()
    first = client.post("/api/play", json={"board": board, "move": 3, "model_player": 1})
    assert first.status_code == 200, first.get_json()
    body = first.get_json()
    assert [m["player"] for m in body["moves"]] == ["human", "model"]
    model_action = body["model"]["action"]
    before_model = rules.step(rules.state_from_positions(np.array([board])), np.array([3]))[0]
    assert rules.legal_actions(before_model)[0, model_action], "the model's move must be legal"
    assert -1.0 <= body["model"]["value"] <= 1.0
    assert body["model"]["version"] == 1
    assert len(body["model"]["policy"]) == rules.spec.num_actions
    assert np.count_nonzero(body["board"]) == 2 and body["to_play"] == 0
    # Play the rest of the game (the first legal move each time) until it ends.
    for _ in range(rules.spec.max_moves):
        if body["game_over"]:
            break
        move = body["legal"].index(True)
        response = client.post("/api/play", json={"board": body["board"], "move": move, "model_player": 1})
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
    assert body["game_over"] and body["winner"] in ("human", "model", "draw") and body["message"]
    assert client.post("/api/play", json={"board": body["board"], "move": 0, "model_player": 1}).status_code == 400
    # The model opens.
    opened = client.post("/api/play", json={"board": board, "move": None, "model_player": 0}).get_json()
    assert [m["player"] for m in opened["moves"]] == ["model"] and np.count_nonzero(opened["board"]) == 1


def test_othello_passes_turns_and_disc_counts(model_network):
    """Othello against a served model: the opening comes from the rules, whose turn it is travels
    with the board (a pass leaves the board silent on it), pass is legal only without a move."""
    network = model_network("othello")
    client, _ = monitor_client(game="othello", network=network.grpc_address, play_simulations=8)
    info = client.get("/api/play").get_json()
    assert info["playable"] and (info["rows"], info["cols"], info["pass_action"]) == (8, 8, 64)
    start = info["start"]
    assert start["to_play"] == 0 and np.count_nonzero(start["board"]) == 4
    assert [a for a, ok in enumerate(start["legal"]) if ok] == [19, 26, 37, 44]  # d3, c4, f5, e6
    rules = games.make("othello")
    first = client.post("/api/play", json={"board": start["board"], "move": 19, "model_player": 1, "to_play": 0})
    assert first.status_code == 200, first.get_json()
    body = first.get_json()
    assert [m["player"] for m in body["moves"]] == ["human", "model"] and body["to_play"] == 0
    assert sum(body["discs"]) == 6 and body["discs"] == [int((np.array(body["board"]) == p).sum()) for p in (1, 2)]
    after_human = rules.step(rules.state_from_positions(np.array([start["board"]])), np.array([19]))[0]
    assert rules.legal_actions(after_human)[0, body["model"]["action"]]
    assert len(body["model"]["policy"]) == 65
    refused = client.post("/api/play", json={"board": body["board"], "move": 64, "model_player": 1, "to_play": 0})
    assert refused.status_code == 400 and "pass only when you have no other move" in refused.get_json()["error"]
    taken = client.post("/api/play", json={"board": body["board"], "move": 27, "model_player": 1, "to_play": 0})
    assert taken.status_code == 400 and "flips nothing (the cell is taken)" in taken.get_json()["error"]
    # White (the person) to move with no move of its own: it passes, the model (black) closes the
    # only line and the game is over, neither side able to move: 3-0 to the model.
    board = np.zeros((8, 8), int)
    board[0, 0], board[0, 1] = 1, 2
    flips_nothing = client.post("/api/play", json={"board": board.tolist(), "move": 2, "model_player": 0, "to_play": 1})
    assert flips_nothing.status_code == 400 and "flips nothing" in flips_nothing.get_json()["error"]
    passed = client.post("/api/play", json={"board": board.tolist(), "move": 64, "model_player": 0, "to_play": 1})
    assert passed.status_code == 200, passed.get_json()
    body = passed.get_json()
    assert [(m["player"], m["action"]) for m in body["moves"]] == [("human", 64), ("model", 2)]
    assert body["game_over"] and body["winner"] == "model" and body["discs"] == [3, 0]
    assert body["message"] == "The model wins. 3–0"
    over = client.post("/api/play", json={"board": body["board"], "move": None, "model_player": 0, "to_play": 0})
    assert over.status_code == 400 and "game is over" in over.get_json()["error"]
    # to_play is Othello's alone, and only 0 or 1
    bad = client.post("/api/play", json={"board": start["board"], "move": 19, "model_player": 1, "to_play": 2})
    assert bad.status_code == 400 and "to_play must be 0 (black) or 1 (white), got 2" in bad.get_json()["error"]


def test_to_play_is_refused_where_the_board_tells_it(model_network):
    network = model_network("tictactoe")
    client, _ = monitor_client(game="tictactoe", network=network.grpc_address, play_simulations=2)
    answer = client.post("/api/play", json={"board": [[0] * 3] * 3, "move": 4, "model_player": 1, "to_play": 0})
    assert answer.status_code == 400 and "to_play is for othello only" in answer.get_json()["error"]


def test_2048_the_model_plays_and_a_person_takes_over(model_network):
    """2048 against a served (randomly initialized) model: the model's moves come from a one-player
    search, a person's move goes in between, an illegal one is refused by name."""
    network = model_network("2048")
    client, _ = monitor_client(game="2048", network=network.grpc_address, play_simulations=4)
    info = client.get("/api/play").get_json()
    assert info["playable"] and info["moves_by"] == "direction"
    rules = games.make("2048")
    dealt = client.post("/api/play", json={"board": None, "move": None}).get_json()
    assert np.count_nonzero(dealt["board"]) == 2 and dealt["moves"] == []
    body, score = dealt, 0.0
    for _ in range(3):  # the model moves (no move in the request)
        before = np.array(body["board"])
        response = client.post("/api/play", json={"board": body["board"], "move": None})
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        [move] = body["moves"]
        assert move["player"] == "model" and move["action"] == body["model"]["action"]
        assert rules.legal_actions(rules.state_from_positions(before[None]))[0, move["action"]]
        slid, reward = g2048.slide(before[None].astype(np.int8), np.array([move["action"]]))
        assert body["reward"] == move["reward"] == float(reward[0])
        assert np.count_nonzero(np.array(body["board"]) - slid[0]) == 1  # one tile spawned
        assert body["model"]["version"] == 1 and len(body["model"]["policy"]) == 4
        assert body["model"]["simulations"] == 4 and body["model"]["seconds"] > 0
        assert body["max_tile"] == 2 ** max(max(row) for row in body["board"])
        score += body["reward"]
    # A person takes over, then the model again.
    move = body["legal"].index(True)
    body = client.post("/api/play", json={"board": body["board"], "move": move}).get_json()
    assert [m["player"] for m in body["moves"]] == ["human"] and body["model"] is None
    again = client.post("/api/play", json={"board": body["board"], "move": None})
    assert again.status_code == 200 and again.get_json()["moves"][0]["player"] == "model"
    illegal = client.post("/api/play", json={"board": [[1, 2, 3, 4]] + [[0] * 4] * 3, "move": 0})
    assert illegal.status_code == 400 and illegal.get_json()["error"] == "illegal move: up changes nothing"
    bad = client.post("/api/play", json={"board": [[0] * 4] * 3, "move": None})
    assert bad.status_code == 400 and "got shape [3, 4]" in bad.get_json()["error"]
    refused = client.post("/api/play", json={"board": body["board"], "move": None, "model_player": 0})
    assert refused.status_code == 400 and "model_player has no meaning" in refused.get_json()["error"]


def test_monitor_process_reports_its_port_and_stops_on_sigterm(start_monitor, model_network):
    network = model_network("tictactoe")
    replay_port = closed_port()
    process = start_monitor(["--game", "tictactoe", "--replay", f"127.0.0.1:{replay_port}",
                             "--network", network.grpc_address,
                             "--metrics", f"network=127.0.0.1:{network.ready['metrics_port']}"])
    ready = process.ready
    assert ready["http_port"] > 0 and ready["metrics_port"] == ready["http_port"]
    base = f"http://127.0.0.1:{ready['http_port']}"
    status, text = http_get(base + "/")
    assert status == 200 and f"replay unreachable at 127.0.0.1:{replay_port}" in text
    status, fleet = http_json(base + "/api/fleet")
    network_card = next(s for s in fleet["services"] if s["name"] == "network")
    assert network_card["status"] == "up" and network_card["grpc"]["status"] == "SERVING"
    status, answer = http_json(base + "/api/play", {"board": [[0] * 3] * 3, "move": 0, "model_player": 1})
    assert status == 200 and answer["model"]["action"] != 0
    status, metrics = http_get(base + "/metrics")
    assert status == 200
    assert re.search(re.escape(monitor_metrics.REQUESTS_TOTAL) + r'\{code="200",endpoint="api_play"\} 1\.0', metrics)
    assert re.search(re.escape(monitor_metrics.SCRAPE_ERRORS_TOTAL) + r'\{target="replay:grpc"\} [1-9]', metrics)
    assert f'{monitor_metrics.PLAY_MOVES_TOTAL}{{player="model"}} 1.0' in metrics
    assert process.stop() == 0
    assert any(e["event"] == "stopped" for e in process.events)


def test_a_name_with_several_addresses_is_every_replica(monkeypatch):
    """docker compose's `agent` name resolves to one address per replica (--scale agent=N): the
    monitor scrapes each and sums their rates into one card."""
    import socket

    first = MetricsPage("127.0.0.1")
    second = MetricsPage("127.0.0.2", first.port)
    try:
        real = socket.getaddrinfo

        def fake_getaddrinfo(host, port, *args, **kwargs):
            if host == "agent.compose.test":
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in ("127.0.0.1", "127.0.0.2")]
            return real(host, port, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
        client, scraper = monitor_client(game="cartpole",
                                         metrics=(MetricsTarget("agent", f"agent.compose.test:{first.port}"),))
        first.text = second.text = f"{agent_metrics.SIMULATIONS_TOTAL} 100\n{agent_metrics.MODEL_VERSION} 3\n"
        before = scraper.scrape_once()
        first.text = f"{agent_metrics.SIMULATIONS_TOTAL} 300\n{agent_metrics.MODEL_VERSION} 4\n"
        second.text = f"{agent_metrics.SIMULATIONS_TOTAL} 500\n{agent_metrics.MODEL_VERSION} 3\n"
        after = scraper.scrape_once()
        # Named by replica number, not by address (see test_monitor_replicas.py).
        assert {n: s.address for n, s in after.instances.items()} == {
            "agent#0": f"127.0.0.1:{first.port}", "agent#1": f"127.0.0.2:{first.port}"}
        names = sorted(after.instances)
        seconds = [after.instances[n].time - before.instances[n].time for n in names]
        fleet = client.get("/api/fleet").get_json()
        (card,) = fleet["services"]
        assert card["status"] == "up" and len(card["instances"]) == 2 and card["model_version"] == 4
        sims = dict((label, value) for label, value, _ in card["facts"])["sims/s"]
        assert sims == pytest.approx(200 / seconds[0] + 400 / seconds[1])
        series = client.get("/api/series").get_json()["series"]
        assert series["agent_oldest_model_version"][-1] == 3 and series["agent_model_version"][-1] == 4
    finally:
        first.close()
        second.close()
