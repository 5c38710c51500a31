"""The launcher's one live status line, read from the services' own /metrics endpoints."""

from __future__ import annotations

import time

from services.launcher.local import LocalFleet, sum_samples


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
        simulations = sum(sum_samples(a, "mufleet_agent_simulations_total") for a in agents)
        now = time.monotonic()
        rate = 0.0
        if self._last and now > self._last[0]:
            rate = max(0.0, (simulations - self._last[1]) / (now - self._last[0]))
        self._last = (now, simulations)
        returns = [a["mufleet_agent_recent_mean_return"] for a in agents
                   if "mufleet_agent_recent_mean_return" in a]
        return {
            "elapsed_s": now - self.started,
            "trainer_step": sum_samples(trainer, "mufleet_trainer_steps_total"),
            "model_version": trainer.get("mufleet_trainer_exported_version", -1),
            "games": replay.get("mufleet_replay_games", 0),
            "positions": replay.get("mufleet_replay_positions", 0),
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
