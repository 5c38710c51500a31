"""The in-process launcher: the fleet's program, every node a library in this process."""

from __future__ import annotations

import numpy as np
import pytest

from models.export import load_version
from services.agent import metrics as agent_metrics
from services.common.logs import get_logger
from services.common.metrics import sum_samples
from services.launcher.inprocess import InProcessFleet
from services.launcher.local import wait_for
from services.launcher.topology import FleetConfig, build_topology
from services.replay.client import ReplayClient
from services.trainer import metrics as trainer_metrics

TRAIN_STEPS = 40


@pytest.mark.e2e
@pytest.mark.timeout(600)
@pytest.mark.parametrize("chance_codes", [0, 4], ids=["muzero", "stochastic-muzero"])
def test_the_program_runs_in_one_process_and_trains(tmp_path, chance_codes):
    """With chance codes only the trainer is told: the agent's searches turn stochastic by the
    model's own say, and the replay serves the chance encoder's observations on request. The
    plain model is also narrower than the game's (hidden_size, the trainer's alone too): the
    agent sizes its trees by the model's hidden state."""
    changes = (("chance_codes", chance_codes),) if chance_codes else (("hidden_size", 24),)
    config = FleetConfig(
        game="cartpole", run_dir=tmp_path / "run", games_per_batch=16, simulations=4,
        fixed_ports=False, monitor=False, preset_changes=changes,
        extra_args=(("trainer", ("--export-interval", "10", "--log-interval", "10", "--batch-size", "32")),
                    ("replay", ("--min-positions", "100"))))
    log = get_logger("launcher", stream=open(tmp_path / "launcher.log", "w"))
    fleet = InProcessFleet(build_topology(config), log)
    try:
        fleet.start()
        assert list(fleet.services) == ["environment", "replay", "trainer", "network", "agent-0"]
        # Every node bound its own ports and serves its own registry: no metric is shared.
        assert len(set(fleet.metrics_addresses.values())) == 5
        with ReplayClient(fleet.grpc_addresses["replay"]) as replay:
            assert wait_for(lambda: replay.get_stats().positions > 0, timeout_s=120), "no game reached replay"
        assert wait_for(lambda: sum_samples(fleet.scrape("trainer"), trainer_metrics.STEPS_TOTAL) >= TRAIN_STEPS,
                        timeout_s=300), f"the trainer did not reach {TRAIN_STEPS} steps"
        assert wait_for(lambda: fleet.scrape("agent-0").get(agent_metrics.MODEL_VERSION, 0) >= 10,
                        timeout_s=120), "the agent did not follow the trainer's versions"
        assert sum_samples(fleet.scrape("agent-0"), agent_metrics.SIMULATIONS_TOTAL) > 0
        assert not fleet.exited(), f"a service ended: {fleet.exited()}"
    finally:
        codes = fleet.stop()
    assert codes["agent-0"] == 0 and codes["trainer"] == 0, codes  # records flushed, checkpoint written
    assert (config.run_dir / "checkpoints" / "checkpoint").exists()
    model = load_version(config.run_dir / "models" / "muzero")
    assert model.stochastic == bool(chance_codes)
    hidden = model.initial_inference(np.zeros((1, 4), np.float32))["hidden_state"]
    assert hidden.shape == (1, 64 if chance_codes else 24)  # cartpole's hidden_size is 64


def test_nodes_without_an_in_process_entry_are_named(tmp_path):
    config = FleetConfig(game="cartpole", run_dir=tmp_path / "run", fixed_ports=False, monitor=True)
    with pytest.raises(ValueError, match="no in-process entry for monitor"):
        InProcessFleet(build_topology(config))
