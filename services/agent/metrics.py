"""The agent's Prometheus metrics."""

from prometheus_client import Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS_S

SIMULATIONS = Counter("mufleet_agent_simulations_total", "Search simulations run, summed over games")
MOVES = Counter("mufleet_agent_moves_total", "Moves played, summed over games")
GAMES_FINISHED = Counter("mufleet_agent_games_finished_total", "Games played to their end")
EPISODE_RETURN = Histogram("mufleet_agent_episode_return", "Return of each finished game (player 0's)",
                           buckets=(-1, -0.5, 0, 0.5, 1, 10, 50, 100, 200, 300, 400, 475, 500, 1000, 5000, 20000))
EPISODE_LENGTH = Histogram("mufleet_agent_episode_length", "Moves of each finished game",
                           buckets=(5, 9, 20, 42, 60, 100, 200, 300, 400, 500, 1000, 5000))
RECENT_RETURN = Gauge("mufleet_agent_recent_mean_return", "Mean return of the last 100 finished games")
RECENT_LENGTH = Gauge("mufleet_agent_recent_mean_length", "Mean length of the last 100 finished games")
NETWORK_SECONDS = Histogram("mufleet_agent_network_request_seconds", "Latency of network requests",
                            ["signature"], buckets=LATENCY_BUCKETS_S)
MOVE_SECONDS = Histogram("mufleet_agent_move_seconds", "Time of one move of all B games (search + step)",
                         buckets=LATENCY_BUCKETS_S)
MODEL_VERSION = Gauge("mufleet_agent_model_version", "Model version used by the latest move")
RECORDS_SENT = Counter("mufleet_agent_records_acked_total", "Game records acknowledged by the replay server")
RECORDS_PENDING = Gauge("mufleet_agent_records_pending", "Game records waiting for the replay's ack")
PEER_FAILURES = Counter("mufleet_agent_peer_failures_total", "Failed calls to peers", ["peer", "code"])
