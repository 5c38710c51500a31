"""Unit tests of the monitor: flags and config, rates from scrapes, the play rules, the app's
pages and API with no service behind them."""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess

import numpy as np
import pytest

from monitor import metrics as monitor_metrics
from monitor.__main__ import parse_args
from monitor.app import clean, create_app
from monitor.config import MetricsTarget, MonitorConfig, role_of
from monitor.metrics import MonitorMetrics
from monitor.play import PlayError, Player
from monitor.ratelimit import TokenBucket
from monitor.scraper import SERIES_BY_KEY, InstanceScrape, Round, Samples, Scraper, _Deltas, _thin
from services.agent import metrics as agent_metrics
from services.common.logs import get_logger
from services.network import metrics as network_metrics
from services.replay import metrics as replay_metrics
from services.trainer import metrics as trainer_metrics


def quiet_log():
    return get_logger("monitor", stream=io.StringIO())


# -- flags and config ----------------------------------------------------------------------------

def test_metrics_target_parse():
    target = MetricsTarget.parse("agent-3=127.0.0.1:9103")
    assert (target.name, target.address, target.path, target.role) == ("agent-3", "127.0.0.1:9103", "/metrics", "agent")
    tf_serving = MetricsTarget.parse("network=network:8501/monitoring/prometheus/metrics")
    assert (tf_serving.address, tf_serving.path) == ("network:8501", "/monitoring/prometheus/metrics")
    for bad in ("agent", "=1.2.3.4:5", "agent=", "agent=host", "agent=host:port", "agent=host:70000"):
        with pytest.raises(ValueError, match="--metrics"):
            MetricsTarget.parse(bad)


def test_role_of():
    assert role_of("agent-0") == "agent"
    assert role_of("agent-12") == "agent"
    assert role_of("replay") == "replay"
    assert role_of("my-service") == "my-service"


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="MonitorConfig.game"):
        MonitorConfig(game="chess")
    with pytest.raises(ValueError, match="MonitorConfig.replay"):
        MonitorConfig(game="cartpole", replay="localhost")
    with pytest.raises(ValueError, match="MonitorConfig.metrics names must be unique"):
        MonitorConfig(game="cartpole", metrics=(MetricsTarget("a", "h:1"), MetricsTarget("a", "h:2")))
    with pytest.raises(ValueError, match="MonitorConfig.scrape_interval_s"):
        MonitorConfig(game="cartpole", scrape_interval_s=0)


def test_launcher_flags_parse():
    """Exactly the flags services/launcher/topology.py gives the monitor."""
    _, config = parse_args(["--game", "cartpole", "--environment", "127.0.0.1:50000", "--replay", "127.0.0.1:50001",
                            "--network", "127.0.0.1:50002", "--metrics", "environment=127.0.0.1:9100",
                            "--metrics", "agent-0=127.0.0.1:9103", "--port", "0"])
    assert config.network == "127.0.0.1:50002"
    assert [t.name for t in config.metrics] == ["environment", "agent-0"]


def test_bad_flags_exit_with_a_message(capsys):
    with pytest.raises(SystemExit) as exited:
        parse_args(["--game", "cartpole", "--metrics", "agent-0"])
    assert exited.value.code == 2
    assert "NAME=HOST:PORT" in capsys.readouterr().err


# -- rates -------------------------------------------------------------------------------------

def scrape(name: str, t: float, text: str, ok: bool = True) -> InstanceScrape:
    return InstanceScrape(name, name, role_of(name), "127.0.0.1:1", "/metrics", t, ok,
                          samples=Samples.parse(text) if ok else Samples())


def test_rates_are_counter_deltas_summed_over_instances():
    before = Round(100.0, {"agent-0": scrape("agent-0", 100.0, f"{agent_metrics.SIMULATIONS_TOTAL} 1000\n"),
                           "agent-1": scrape("agent-1", 100.0, f"{agent_metrics.SIMULATIONS_TOTAL} 50\n")}, {}, None, None)
    after = Round(102.0, {"agent-0": scrape("agent-0", 102.0, f"{agent_metrics.SIMULATIONS_TOTAL} 1400\n"),
                          # agent-1 restarted: its counter went down, so its new value is the delta
                          "agent-1": scrape("agent-1", 102.0, f"{agent_metrics.SIMULATIONS_TOTAL} 20\n")}, {}, None, None)
    rate = SERIES_BY_KEY["agent_simulations_per_s"].compute(_Deltas(before, after))
    assert rate == pytest.approx(400 / 2 + 20 / 2)
    # No previous round (or the instance was down then): no rate yet, not zero.
    assert SERIES_BY_KEY["agent_simulations_per_s"].compute(_Deltas(None, after)) is None
    down = Round(100.0, {"agent-0": scrape("agent-0", 100.0, "", ok=False)}, {}, None, None)
    assert SERIES_BY_KEY["agent_simulations_per_s"].compute(
        _Deltas(down, Round(102.0, {"agent-0": after.instances["agent-0"]}, {}, None, None))) is None


def test_histogram_means_over_the_interval():
    rows, seconds = network_metrics.BATCH_SIZE, network_metrics.PREDICT_SECONDS

    def text(rows_sum, runs, seconds_sum, requests):
        return (f"{rows}_sum {rows_sum}\n{rows}_count {runs}\n"
                f"{seconds}_sum{{signature=\"a\"}} {seconds_sum}\n"
                f"{seconds}_count{{signature=\"a\"}} {requests}\n")
    before = Round(0.0, {"network": scrape("network", 0.0, text(100, 10, 1.0, 100))}, {}, None, None)
    after = Round(2.0, {"network": scrape("network", 2.0, text(420, 20, 1.5, 200))}, {}, None, None)
    d = _Deltas(before, after)
    assert SERIES_BY_KEY["network_batch_size"].compute(d) == pytest.approx(32.0)
    assert SERIES_BY_KEY["network_latency_ms"].compute(d) == pytest.approx(5.0)
    # Nothing observed in between: no mean (not a division by zero).
    assert SERIES_BY_KEY["network_batch_size"].compute(_Deltas(after, after)) is None


def test_tf_serving_request_counter_is_the_fallback():
    text = '# TYPE :tensorflow:serving:request_count counter\n:tensorflow:serving:request_count{{status="OK"}} {}\n'
    before = Round(0.0, {"network": scrape("network", 0.0, text.format(10))}, {}, None, None)
    after = Round(4.0, {"network": scrape("network", 4.0, text.format(30))}, {}, None, None)
    assert SERIES_BY_KEY["network_requests_per_s"].compute(_Deltas(before, after)) == pytest.approx(5.0)


def test_replay_series_prefer_get_stats_and_versions_skip_unset():
    stats = {"positions": 1234, "games": 56, "recent_games": 0, "recent_mean_return": 0.0}
    cur = Round(1.0, {"replay": scrape("replay", 1.0, f"{replay_metrics.POSITIONS} 99\n"),
                      "trainer": scrape("trainer", 1.0, f"{trainer_metrics.EXPORTED_VERSION} -1\n")}, {}, stats, None)
    d = _Deltas(None, cur)
    assert SERIES_BY_KEY["replay_positions"].compute(d) == 1234
    assert SERIES_BY_KEY["replay_recent_return"].compute(d) is None  # no recent games: no point
    assert SERIES_BY_KEY["trainer_exported_version"].compute(d) is None  # -1: nothing exported yet


def agent_page(max_tiles: list[int]) -> str:
    """An agent's /metrics text after finishing games with these largest tiles, from the
    agent's own metrics (what services.agent.selfplay exports)."""
    from prometheus_client import CollectorRegistry, generate_latest

    metrics = agent_metrics.AgentMetrics(CollectorRegistry())
    if max_tiles:
        metrics.recent_statistic.labels("max_tile").set(float(np.mean(max_tiles)))
    for tile in max_tiles:
        metrics.episode_max_tile.observe(tile)
    return generate_latest(metrics.registry).decode()


def test_max_tile_series_from_the_agents_statistics():
    cur = Round(1.0, {"agent-0": scrape("agent-0", 1.0, agent_page([256, 512, 512, 1024])),
                      "agent-1": scrape("agent-1", 1.0, agent_page([128, 2048, 64, 256]))}, {}, None, None)
    d = _Deltas(None, cur)
    assert SERIES_BY_KEY["agent_recent_max_tile"].compute(d) == pytest.approx((576 + 624) / 2)
    assert SERIES_BY_KEY["agent_max_tile_512_share"].compute(d) == pytest.approx(4 / 8)
    assert SERIES_BY_KEY["agent_max_tile_1024_share"].compute(d) == pytest.approx(2 / 8)
    assert SERIES_BY_KEY["agent_max_tile_2048_share"].compute(d) == pytest.approx(1 / 8)
    # A game without statistics (or no finished game yet): no point, not a zero.
    quiet = Round(1.0, {"agent-0": scrape("agent-0", 1.0, agent_page([]))}, {}, None, None)
    for key in ("agent_recent_max_tile", "agent_max_tile_512_share", "agent_max_tile_2048_share"):
        assert SERIES_BY_KEY[key].compute(_Deltas(None, quiet)) is None, key


def test_thin_keeps_the_newest():
    assert _thin(list(range(10)), 20) == list(range(10))
    thinned = _thin(list(range(1000)), 100)
    assert len(thinned) <= 100 and thinned[-1] == 999


def test_clean_replaces_non_finite_floats():
    assert clean({"a": [1.0, math.nan, math.inf], 2: None}) == {"a": [1.0, None, None], "2": None}


# -- the play rules (no network needed) ----------------------------------------------------------

def player(game: str, network: str = "") -> Player:
    return Player(MonitorConfig(game=game, network=network), MonitorMetrics())


def test_play_refuses_illegal_moves_with_clear_messages():
    p = player("tictactoe")
    board = [[1, 0, 0], [0, 2, 0], [0, 0, 0]]
    with pytest.raises(PlayError, match=r"illegal move: the cell at row 2, column 2 is taken") as refused:
        p.play(board, 4, 1)
    assert refused.value.status == 400
    with pytest.raises(PlayError, match=r"move must be an integer in \[0, 9\)"):
        p.play(board, 9, 1)
    with pytest.raises(PlayError, match="move must be an integer"):
        p.play(board, "3", 1)
    with pytest.raises(PlayError, match="it is the model's turn"):
        p.play([[1, 0, 0], [0, 0, 0], [0, 0, 0]], 4, 1)
    with pytest.raises(PlayError, match="bad position"):
        p.play([[1, 1, 1], [0, 0, 0], [0, 0, 0]], 4, 1)  # three pieces of one player, none of the other
    with pytest.raises(PlayError, match="bad position"):
        p.play([[0, 0], [0, 0]], 0, 1)
    with pytest.raises(PlayError, match="the game is over"):
        p.play([[1, 1, 1], [2, 2, 0], [0, 0, 0]], 5, 1)
    with pytest.raises(PlayError, match="model_player must be 0"):
        p.play(board, 3, 7)


def test_connect4_full_column_is_illegal():
    p = player("connect4")
    board = np.zeros((6, 7), int)
    board[:, 3] = [2, 1, 2, 1, 2, 1]  # column 4 full (bottom row is row 5)
    with pytest.raises(PlayError, match="illegal move: column 4 is full"):
        p.play(board.tolist(), 3, 1)


def test_a_winning_human_move_ends_the_game_without_the_model():
    p = player("tictactoe")  # no network configured: the model is never asked
    answer = p.play([[1, 1, 0], [2, 2, 0], [0, 0, 0]], 2, 1)
    assert answer["game_over"] and answer["winner"] == "human" and answer["message"] == "You win!"
    assert answer["board"][0] == [1, 1, 1]
    assert answer["moves"] == [{"player": "human", "action": 2}] and answer["model"] is None


def test_a_legal_move_with_no_network_is_a_503():
    with pytest.raises(PlayError, match="no network service configured") as refused:
        player("tictactoe").play([[0] * 3] * 3, 4, 1)
    assert refused.value.status == 503


def test_games_the_page_cannot_play_say_so():
    info = player("cartpole").info()
    assert info["playable"] is False and "tictactoe" in info["message"] and "2048" in info["message"]
    with pytest.raises(PlayError, match="this fleet trains cartpole"):
        player("cartpole").play([[0]], 0, 1)


def test_2048_a_persons_legal_move_slides_merges_and_spawns():
    p = player("2048")  # no network configured: a person's move never asks the model
    info = p.info()
    assert info["playable"] and info["moves_by"] == "direction" and info["rows"] == info["cols"] == 4
    assert info["directions"] == ["up", "right", "down", "left"]
    board = [[1, 1, 2, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 3]]
    answer = p.play(board, 3)  # left: 2 2 4 -> 4 4; 8 slides to the left wall
    assert answer["moves"] == [{"player": "human", "action": 3, "direction": "left", "reward": 4.0}]
    assert answer["reward"] == 4.0 and answer["model"] is None and answer["winner"] is None
    after = np.array(answer["board"])
    assert after[0, :2].tolist() == [2, 2] and after[3, 0] == 3
    slid = np.zeros((4, 4), int)
    slid[0, :2], slid[3, 0] = 2, 3
    spawned = after - slid
    assert np.count_nonzero(spawned) == 1 and spawned.max() in (1, 2) and (slid[spawned > 0] == 0).all()
    assert answer["max_tile"] == 8 and not answer["game_over"] and answer["message"] is None
    assert answer["legal"] == p.game.legal_actions(p.game.state_from_positions(after[None]))[0].tolist()
    # The spawn is random: the same move on the same board lands somewhere else in some of 40 tries.
    boards = {str(p.play(board, 3)["board"]) for _ in range(40)}
    assert len(boards) > 1


def test_2048_illegal_moves_and_bad_boards_are_refused_by_name():
    p = player("2048")
    board = [[1, 2, 3, 4], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    with pytest.raises(PlayError, match=r"^illegal move: left changes nothing$") as refused:
        p.play(board, 3)
    assert refused.value.status == 400
    with pytest.raises(PlayError, match=r"illegal move: up changes nothing"):
        p.play(board, 0)
    with pytest.raises(PlayError, match=r"move must be an integer in \[0, 4\) \(0 up.*got 4"):
        p.play(board, 4)
    with pytest.raises(PlayError, match=r"move must be an integer .*got 'left'"):
        p.play(board, "left")
    with pytest.raises(PlayError, match=r"move must be an integer .*got True"):
        p.play(board, True)
    with pytest.raises(PlayError, match=r"bad board: expected a 4x4 grid .* got shape \[3, 3\]"):
        p.play([[0] * 3] * 3, 0)
    with pytest.raises(PlayError, match=r"bad board: expected a 4x4 grid .* got shape \[16\]"):
        p.play([0] * 16, 0)
    with pytest.raises(PlayError, match=r"bad board: expected a 4x4 grid"):
        p.play([[0, 0, 0, 0], [0, 0, 0], [0] * 4, [0] * 4], 0)  # ragged
    with pytest.raises(PlayError, match=r"bad board: expected a 4x4 grid"):
        p.play([[0.5] * 4] * 4, 0)
    with pytest.raises(PlayError, match=r"bad board: tile exponents must be in \[0, 17\] .*got 18 at row 2, column 3"):
        p.play([[0] * 4, [0, 0, 18, 0], [0] * 4, [0] * 4], 0)
    with pytest.raises(PlayError, match=r"got -1 at row 1, column 1"):
        p.play([[-1, 0, 0, 0], [0] * 4, [0] * 4, [0] * 4], 0)
    with pytest.raises(PlayError, match="model_player has no meaning in 2048"):
        p.play(board, 1, 1)
    with pytest.raises(PlayError, match="a new game .* takes no move"):
        p.play(None, 1)


def test_2048_game_over_names_the_largest_tile():
    p = player("2048")
    # One move left (right merges the 4 4 of the first row), and none after it: the spawn, a 2
    # or a 4, fills the only empty cell, next to two 8s (exponents below).
    board = [[2, 2, 4, 9], [3, 4, 5, 6], [6, 5, 4, 3], [7, 8, 7, 9]]
    answer = p.play(board, 1)
    assert answer["board"][0][1:] == [3, 4, 9] and answer["board"][0][0] in (1, 2)
    assert answer["game_over"] and answer["legal"] == [False] * 4
    assert answer["max_tile"] == 512 and answer["message"] == "Game over: largest tile 512."
    assert answer["reward"] == 8.0 and answer["winner"] is None
    with pytest.raises(PlayError, match=r"the game is over \(no move changes the board\)"):
        p.play(answer["board"], None)  # not even the model is asked


def test_2048_a_new_game_is_dealt_by_the_rules():
    answer = player("2048").play(None, None)
    board = np.array(answer["board"])
    assert board.shape == (4, 4) and np.count_nonzero(board) == 2 and set(board[board > 0]) <= {1, 2}
    assert answer["moves"] == [] and answer["reward"] == 0.0 and not answer["game_over"]
    assert answer["max_tile"] == 2 ** board.max()


def test_2048_a_model_move_with_no_network_is_a_503():
    with pytest.raises(PlayError, match="no network service configured") as refused:
        player("2048").play([[1, 0, 0, 0], [0] * 4, [0] * 4, [0] * 4], None)
    assert refused.value.status == 503


# -- the app with no service behind it -----------------------------------------------------------

@pytest.fixture
def client():
    app = create_app(MonitorConfig(game="tictactoe"), quiet_log())
    return app.test_client()


def test_pages_render_with_no_services(client):
    for path in ("/", "/play"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert b"MuFleet" in response.data
    assert b"chart-max-tile" not in client.get("/").data  # 2048's chart only
    assert client.get("/static/vendor/chart.umd.min.js").status_code == 200
    assert client.get("/static/vendor/chart.js.LICENSE.md").status_code == 200


def test_api_errors_are_json(client):
    response = client.get("/api/nothing")
    assert response.status_code == 404 and "no such API endpoint" in response.get_json()["error"]
    response = client.post("/api/play", data="not json", content_type="application/json")
    assert response.status_code == 400 and "expected a JSON object" in response.get_json()["error"]
    response = client.post("/api/play", json={"board": [[0, 0, 0], [0, 4, 0], [0, 0, 0]], "move": 1})
    assert response.status_code == 400 and "bad position" in response.get_json()["error"]
    response = client.post("/api/play", json={"move": 1, "model_player": 1})
    assert response.status_code == 400 and "the body has no board" in response.get_json()["error"]
    response = client.get("/api/replay")
    assert response.status_code == 503 and "no replay service configured" in response.get_json()["error"]
    assert client.get("/api/series?max_points=x").status_code == 400
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_own_metrics_follow_prometheus_conventions(client):
    client.get("/")
    client.get("/api/fleet")
    response = client.get("/metrics")
    assert response.status_code == 200
    text = response.data.decode()
    assert f'{monitor_metrics.REQUESTS_TOTAL}{{code="200",endpoint="dashboard"}} 1.0' in text
    assert monitor_metrics.SCRAPE_ERRORS_TOTAL in text
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert all(name.startswith(("mufleet_monitor_", "process_", "python_")) for name in families), families
    promtool = shutil.which("promtool")
    if promtool:
        checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_series_api_shape(client):
    body = client.get("/api/series").get_json()
    assert set(body) >= {"time", "series", "labels", "losses", "replay_versions", "interval_s"}
    assert len(body["time"]) == 1 and all(len(v) == 1 for v in body["series"].values())
    json.dumps(body)  # plain JSON (no NaN)


def test_tf_serving_without_health_service_is_judged_by_its_model_status():
    from monitor.scraper import Health, Scraper

    config = MonitorConfig(game="cartpole", network="network:8500",
                           metrics=(MetricsTarget.parse("network=network:8501/monitoring/prometheus/metrics"),))
    scraper = Scraper(config, quiet_log(), MonitorMetrics())
    text = '# TYPE :tensorflow:serving:request_count counter\n:tensorflow:serving:request_count{status="OK"} 7\n'
    scraper._cur = Round(1.0, {"network": scrape("network", 1.0, text)},
                         {"network": Health("network:8500", "UNKNOWN")}, None, None)
    scraper._network_versions = {2: "END", 3: "AVAILABLE", 4: "AVAILABLE"}
    (card,) = scraper.fleet()["services"]
    assert card["status"] == "up" and card["grpc"]["status"] == "REACHABLE"
    assert card["model_version"] == 4 and card["versions_available"] == [3, 4]
    scraper._network_versions, scraper._network_versions_error = None, "connection refused"
    (card,) = scraper.fleet()["services"]
    assert card["status"] == "degraded" and card["grpc"]["status"] == "UNREACHABLE"
    assert card["messages"] == ["network unreachable at network:8500 (connection refused)"]


# -- hardening: config errors, bad bodies, rate limit, internal errors ----------------------------

@pytest.mark.parametrize("flags, message", [
    (["--scrape-interval-s", "0"], "--scrape-interval-s must be > 0, got 0.0"),
    (["--history", "1"], "--history must be >= 2, got 1"),
    (["--play-burst", "0"], "--play-burst must be >= 1, got 0"),
    (["--play-rate-per-s", "-1"], "--play-rate-per-s must be >= 0"),
    (["--replay", "nowhere"], "--replay must be HOST:PORT, got 'nowhere'"),
])
def test_config_errors_name_the_flag(capsys, flags, message):
    with pytest.raises(SystemExit) as exited:
        parse_args(["--game", "cartpole", *flags])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "usage: python -m monitor" in err and f"error: {message}" in err
    assert "MonitorConfig" not in err and "Traceback" not in err


def test_play_rate_config_is_validated():
    with pytest.raises(ValueError, match="MonitorConfig.play_burst must be >= 1, got 0"):
        MonitorConfig(game="tictactoe", play_burst=0)
    with pytest.raises(ValueError, match="MonitorConfig.play_rate_per_s must be >= 0"):
        MonitorConfig(game="tictactoe", play_rate_per_s=math.nan)


class SteppedClock:
    """A clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refills_at_its_rate():
    clock = SteppedClock()
    bucket = TokenBucket(rate_per_s=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)  # empty: one token comes in 1/rate s
    clock.now += 0.25
    assert bucket.take() == pytest.approx(0.25)  # half a token there; refused takes take nothing
    clock.now += 0.25
    assert bucket.take() == 0.0
    clock.now += 3600
    assert [bucket.take() for _ in range(4)][-1] > 0  # never more than `burst` saved up
    unlimited = TokenBucket(rate_per_s=0.0, burst=1, clock=clock)
    assert all(unlimited.take() == 0.0 for _ in range(100))


# A move that wins at once: answered by the rules alone, no network needed.
WINNING_MOVE = {"board": [[1, 1, 0], [2, 2, 0], [0, 0, 0]], "move": 2, "model_player": 1}


def test_play_is_rate_limited_with_retry_after():
    clock = SteppedClock()
    config = MonitorConfig(game="tictactoe", play_rate_per_s=0.5, play_burst=2)
    app = create_app(config, quiet_log(), play_limit=TokenBucket(config.play_rate_per_s, config.play_burst, clock))
    client = app.test_client()
    assert [client.post("/api/play", json=WINNING_MOVE).status_code for _ in range(2)] == [200, 200]
    refused = client.post("/api/play", json=WINNING_MOVE)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "2"
    assert "too many play requests" in refused.get_json()["error"]
    # Bad requests count too: a flood of them is refused before it is parsed.
    assert client.post("/api/play", data="[" * 100_000, content_type="application/json").status_code == 429
    clock.now += 1.0
    assert client.post("/api/play", json=WINNING_MOVE).headers["Retry-After"] == "1"
    clock.now += 1.0
    assert client.post("/api/play", json=WINNING_MOVE).status_code == 200
    assert client.get("/api/play").status_code == 200  # only the POST (a search) is limited
    metrics = client.get("/metrics").data.decode()
    assert f'{monitor_metrics.PLAY_ERRORS_TOTAL}{{reason="rate_limited"}} 3.0' in metrics
    assert f'{monitor_metrics.REQUESTS_TOTAL}{{code="429",endpoint="api_play"}} 3.0' in metrics


def test_play_limit_comes_from_the_config():
    # A rate so low that no token comes back while the test runs, whatever the machine's speed.
    client = create_app(MonitorConfig(game="tictactoe", play_rate_per_s=0.001, play_burst=1),
                        quiet_log()).test_client()
    assert client.post("/api/play", json=WINNING_MOVE).status_code == 200
    refused = client.post("/api/play", json=WINNING_MOVE)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 900
    unlimited = create_app(MonitorConfig(game="tictactoe", play_rate_per_s=0, play_burst=1),
                           quiet_log()).test_client()
    assert {unlimited.post("/api/play", json=WINNING_MOVE).status_code for _ in range(40)} == {200}


@pytest.mark.parametrize("body", [
    "[" * 100_000 + "]" * 100_000,                        # nested 100,000 deep
    '{"board": ' + "[" * 100_000 + "]" * 100_000 + "}",  # the same inside the object
    "[" * 100_000,                                        # and never closed
    '{"board": ' + "[" * 20 + "0" + "]" * 20 + ', "move": 0}',  # parses, but deeper than a board
])
def test_deeply_nested_json_is_a_400(client, body):
    response = client.post("/api/play", data=body, content_type="application/json")
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert "nested deeper than" in error and "expected a JSON object" in error
    assert "Recursion" not in error


def test_bodies_that_are_not_json_or_too_big_are_refused_in_json(client):
    response = client.post("/api/play", data=b"\x80\x81\x82", content_type="application/json")
    assert response.status_code == 400 and "the body is not JSON" in response.get_json()["error"]
    response = client.post("/api/play", data="1" * 5000, content_type="application/json")  # too many digits
    assert response.status_code == 400 and "the body is not JSON" in response.get_json()["error"]
    response = client.post("/api/play", data=b" " * (2 * 1024 * 1024), content_type="application/json")
    assert response.status_code == 413 and response.get_json()["error"]
    response = client.post("/api/play", json={**WINNING_MOVE, "move": "x" * 100_000})
    assert response.status_code == 400 and len(response.get_json()["error"]) < 200  # not echoed whole


def test_series_parameters_are_checked(client):
    for query in ("max_points=0", "max_points=-3", "since=nan", "since=inf", "since=soon"):
        response = client.get(f"/api/series?{query}")
        assert response.status_code == 400, query
        assert "max_points must be an integer >= 1" in response.get_json()["error"]
    assert client.get("/api/series?max_points=1&since=0").status_code == 200


class BrokenPlayer(Player):
    def play(self, board, move, model_player, to_play=None):
        raise RuntimeError("secret detail /srv/internal/state.db")


class BrokenScraper(Scraper):
    def fleet(self):
        raise KeyError("secret detail /srv/internal/state.db")


def test_internal_errors_show_an_id_not_the_exception():
    stream = io.StringIO()
    config = MonitorConfig(game="tictactoe")
    log = get_logger("monitor", stream=stream)
    metrics = MonitorMetrics()
    app = create_app(config, log, scraper=BrokenScraper(config, log, metrics),
                     player=BrokenPlayer(config, metrics), metrics=metrics)
    client = app.test_client()
    api = client.post("/api/play", json=WINNING_MOVE)
    page = client.get("/")
    assert api.status_code == 500 and page.status_code == 500
    body, html = api.get_json(), page.data.decode()
    for shown in (json.dumps(body), html):
        assert "secret" not in shown and "RuntimeError" not in shown and "KeyError" not in shown
        assert "request_failed" in shown
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    failed = [e for e in events if e["event"] == "request_failed"]
    assert [e["path"] for e in failed] == ["/api/play", "/"]
    assert failed[0]["id"] == body["id"] and body["id"] in body["error"]
    assert failed[1]["id"] in html
    assert all("secret detail" in e["error"] and "Traceback" in e["traceback"] for e in failed)


def test_http_errors_on_pages_use_the_error_page(client):
    response = client.get("/nothing-here")
    assert response.status_code == 404 and b"There is no page at /nothing-here" in response.data
    response = client.post("/api/fleet")
    assert response.status_code == 405 and "POST is not allowed" in response.get_json()["error"]
