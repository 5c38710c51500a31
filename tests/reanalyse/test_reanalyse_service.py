"""The reanalyse worker as a process, against real replay and network server processes: stored
games get targets from the served version, its metrics count them, and SIGTERM stops it cleanly."""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest

import games
from models.export import export_version
from models.networks import MuZeroNetwork
from services.common.metrics import flat_metrics, sum_samples
from services.launcher.local import wait_for
from services.reanalyse import metrics as reanalyse_metrics
from services.replay.client import ReplayClient
from tests.reanalyse.test_reanalyser import play_record

pytestmark = pytest.mark.integration


def test_a_reanalyse_process_refreshes_stored_targets_with_the_served_version(start_service, tmp_path):
    game = games.make("tictactoe")
    models = tmp_path / "models" / "muzero"
    export_version(MuZeroNetwork(game.spec, game.settings, seed=0), models, 4)
    replay = start_service("services.replay", ["--game", "tictactoe", "--data-dir", str(tmp_path / "replay"),
                                               "--min-positions", "1"])
    network = start_service("services.network", ["--model_name", "muzero", "--model_base_path", str(models),
                                                 "--file_system_poll_wait_seconds", "1"])
    with ReplayClient(replay.grpc_address, timeout_s=30) as client:
        client.add_games([play_record(f"g{i}", seed=i, model_version=0) for i in range(6)])
        before = {g.game.id: g for g in client.sample_games(10)}
        worker = start_service("services.reanalyse", [
            "--game", "tictactoe", "--replay", replay.grpc_address, "--network", network.grpc_address,
            "--batch-size", "16", "--simulations", "4", "--seed", "0", "--metrics-port", "0"],
            default_ports=False)
        metrics_url = f"http://127.0.0.1:{worker.ready['metrics_port']}/metrics"

        def all_refreshed() -> bool:
            return all(g.targets_model_version == 4 for g in client.sample_games(10))

        assert wait_for(all_refreshed, timeout_s=120), worker.tail()
        after = {g.game.id: g for g in client.sample_games(10)}
        for id, stored in after.items():
            assert not np.array_equal(stored.game.policies, before[id].game.policies)
            np.testing.assert_array_equal(stored.game.observations, before[id].game.observations)
            assert np.all(np.isfinite(stored.game.root_values))
            np.testing.assert_allclose(stored.game.policies.sum(axis=1), 1.0, rtol=1e-5)
        samples = flat_metrics(urllib.request.urlopen(metrics_url, timeout=10).read().decode())
        total = sum(g.game.length for g in after.values())
        assert sum_samples(samples, reanalyse_metrics.POSITIONS_TOTAL) >= total
        assert sum_samples(samples, reanalyse_metrics.MODEL_VERSION) == 4
        # The trainer's batches take them: a sample after the refresh works.
        assert client.sample_batch(32).observation.shape[0] == 32
    assert worker.stop() == 0, worker.tail()
