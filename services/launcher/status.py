"""The launcher's one live status line, read from the services' own /metrics endpoints."""

from __future__ import annotations

import time

from services.agent import metrics as agent_metrics
from services.common.metrics import sum_samples
from services.launcher.local import LocalFleet
from services.replay import metrics as replay_metrics
from services.trainer import metrics as trainer_metrics


class FleetStatus:
    """Turns successive scrapes into a line: rates come from counter deltas between calls."""

    def __init__(self, fleet: LocalFleet) -> None:
        self.fleet = fleet
        self.started = time.monotonic()
        self._last: tuple[float, float] | None = None  # (time, simulations counter)

    def snapshot(self) -> dict[str, float]:
        trainer = self.fleet.scrape("trainer")
        replay = self.fleet.scrape("replay")
        agents = [self.fleet.scrape(name) for name in self.fleet.processes if name.startswith("agent")]
        simulations = sum(sum_samples(a, agent_metrics.SIMULATIONS_TOTAL) for a in agents)
        now = time.monotonic()
        rate = 0.0
        if self._last and now > self._last[0]:
            rate = max(0.0, (simulations - self._last[1]) / (now - self._last[0]))
        self._last = (now, simulations)
        returns = [a[agent_metrics.RECENT_MEAN_RETURN] for a in agents
                   if agent_metrics.RECENT_MEAN_RETURN in a]
        return {
            "elapsed_s": now - self.started,
            "trainer_step": sum_samples(trainer, trainer_metrics.STEPS_TOTAL),
            "model_version": trainer.get(trainer_metrics.EXPORTED_VERSION, -1),
            "games": replay.get(replay_metrics.GAMES, 0),
            "positions": replay.get(replay_metrics.POSITIONS, 0),
            "recent_return": sum(returns) / len(returns) if returns else float("nan"),
            "simulations_per_s": rate,
        }

    def line(self) -> str:
        s = self.snapshot()
        minutes, seconds = divmod(int(s["elapsed_s"]), 60)
        return (f"{minutes}:{seconds:02d} step {int(s['trainer_step'])} "
                f"v{int(s['model_version'])} games {int(s['games'])} "
                f"positions {int(s['positions'])} return {s['recent_return']:.1f} "
                f"sims/s {s['simulations_per_s']:.0f}")
