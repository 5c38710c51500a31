"""Helpers of the evaluator's tests: an evaluator over the agent's fakes (the real game rules
in process, a network answering uniform policies at once), and a network whose newest version
follows a script."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from services.common.failures import RetryPolicy
from services.common.metrics import flat_metrics
from services.evaluator.config import EvaluatorConfig
from services.evaluator.evaluator import Evaluator
from services.evaluator.metrics import EvaluatorMetrics
from tests.agent.agent_fakes import FakeEnvironment, FakeNetwork, LogSink

FAST_RETRY = RetryPolicy(initial_backoff_s=0.0, max_backoff_s=0.01)


class ScriptedNetwork(FakeNetwork):
    """FakeNetwork whose newest version is the next of `versions` at each look for the newest
    (an unpinned wait_until_available); the last one stays."""

    def __init__(self, num_actions: int, versions: list[int]) -> None:
        super().__init__(num_actions, newest=versions[0])
        self.script = list(versions)

    def wait_until_available(self, version=None, timeout_s: float = 120.0, stop=None) -> int:
        if version is None and self.script:
            self.newest = self.script.pop(0)
        return self.newest


def make_evaluator(tmp_path, game: str = "tictactoe", network=None, environment=None, sink=None,
                   **fields) -> Evaluator:
    fields = {"ladder": "random,minimax", "games_per_match": 4, "simulations": 2, "poll_s": 0.01,
              "metrics_port": 0, **fields}
    if games_of(game) == 1:
        fields.pop("ladder")
    config = EvaluatorConfig(game=game, network="127.0.0.1:2", environment="127.0.0.1:1",
                             state_dir=str(tmp_path / "state"), **fields)
    import games

    num_actions = games.make(game).spec.num_actions
    return Evaluator(config, (sink or LogSink("evaluator")).log, environment or FakeEnvironment(game),
                     network or FakeNetwork(num_actions), metrics=EvaluatorMetrics(CollectorRegistry()),
                     policy=FAST_RETRY)


def games_of(game: str) -> int:
    import games

    return games.make(game).spec.num_players


def scraped(evaluator: Evaluator) -> dict[str, float]:
    return flat_metrics(generate_latest(evaluator.metrics.registry).decode())
