"""An evicted version is really released, and a version is AVAILABLE only once it is served.

In process, against real small SavedModels (the session's cartpole exports): a `ModelManager`
loads versions as the server's poller does, alone and with a `BatchScheduler` in front. Once a
version has left the window (and every request on it has finished), weak references to its
servable, its `LoadedModel`, the loaded SavedModel object and its signature functions die at
the next garbage collection, and TensorFlow's function library no longer holds its functions:
nothing in the server (a cache, a metric label, a batch queue or an idle batch thread) keeps
an old version alive, so memory stays flat however many versions come and go (measured by
`python -m benchmarks.network --only memory`; no memory is measured here).
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from tensorflow.python.eager import context

from models.export import LoadedModel, prune_versions
from services.common.logs import get_logger
from services.network.batching import BatchScheduler
from services.network.config import BatchingConfig, ModelEntry
from services.network.metrics import NetworkMetrics
from services.network.servables import ModelManager, NotFound, ServableVersion
from tests.network.network_helpers import publish, wait_for


def manager_of(base: Path, num_versions: int = 1, **kwargs) -> ModelManager:
    return ModelManager(ModelEntry("muzero", str(base), num_versions=num_versions), get_logger("network"),
                        metrics=NetworkMetrics(CollectorRegistry()), **kwargs)


def zeros_for(signature) -> dict[str, np.ndarray]:
    """A two-row input of zeros for every input of `signature`."""
    return {name: np.zeros([2 if d is None else d for d in info.shape], info.dtype)
            for name, info in signature.inputs.items()}


def weak_references(servable: ServableVersion) -> tuple[list[weakref.ref], list[bytes]]:
    """Weak references to everything of one version that holds its graphs and variables, and
    the names of its signature functions in TensorFlow's (process-wide) function library."""
    loaded = servable.loaded
    objects = [servable, loaded, loaded.saved_model, *loaded.signatures.values(),
               *(signature.runner for signature in servable.signatures.values())]
    names = [function.inference_fn.name for function in loaded.signatures.values()]
    return [weakref.ref(o) for o in objects], names


def released(references: list[weakref.ref]) -> bool:
    gc.collect()  # a loaded SavedModel's objects refer to each other: freed by the collector
    return all(reference() is None for reference in references)


def in_function_library(names: list[bytes]) -> list[bytes]:
    return [name for name in names if context.context().has_function(name)]


def replace_version(manager: ModelManager, saved_models: Path, base: Path, old: int, new: int) -> None:
    """Publishes `new` and prunes `old` as the trainer does, then one poll: `old` is evicted."""
    publish(saved_models / "cartpole" / str(1 + new % 2), base, new)
    prune_versions(base, 1)
    manager.poll()
    assert manager.versions() == [new]
    with pytest.raises(NotFound):
        manager.get(old)


def test_an_evicted_version_is_released(saved_models, tmp_path):
    base = tmp_path / "muzero"
    publish(saved_models / "cartpole" / "1", base, 1)
    manager = manager_of(base)
    manager.poll()
    servable = manager.get()
    assert servable.version == 1
    for signature in servable.signatures.values():
        signature.run(zeros_for(signature))
    references, names = weak_references(servable)
    assert in_function_library(names) == names
    del servable, signature

    replace_version(manager, saved_models, base, old=1, new=2)

    assert released(references), [r() for r in references if r() is not None]
    assert in_function_library(names) == []
    assert manager.statuses()[1].state == "END"


def test_a_version_that_served_batches_is_released(saved_models, tmp_path):
    base = tmp_path / "muzero"
    publish(saved_models / "cartpole" / "1", base, 1)
    manager = manager_of(base)
    manager.poll()
    scheduler = BatchScheduler(BatchingConfig(num_batch_threads=2), NetworkMetrics(CollectorRegistry())).start()
    try:
        servable = manager.get()
        for signature in servable.signatures.values():
            # The batch queues are keyed by version, and each holds its version's runner.
            outputs = scheduler.run((servable.model_name, servable.version, signature.name), signature.run,
                                    zeros_for(signature), 2, label=signature.name)
            assert outputs["value"].shape == (2,)
        references, names = weak_references(servable)
        del servable, signature, outputs

        replace_version(manager, saved_models, base, old=1, new=2)

        # run() returns as soon as the batch's results are handed over, while the batch thread
        # may still be finishing that batch: wait for it to let go (observable state, no clock).
        wait_for(lambda: released(references), "version 1 to be released after its batches ran", timeout_s=30)
        assert in_function_library(names) == []
        # The newest version still answers through the scheduler after the old queues are gone.
        servable = manager.get()
        signature = servable.signatures["initial_inference"]
        outputs = scheduler.run((servable.model_name, servable.version, signature.name), signature.run,
                                zeros_for(signature), 2, label=signature.name)
        assert outputs["policy_logits"].shape[0] == 2
    finally:
        scheduler.stop()


def test_many_versions_leave_only_the_window_alive(saved_models, tmp_path):
    base = tmp_path / "muzero"
    publish(saved_models / "cartpole" / "1", base, 1)
    manager = manager_of(base, num_versions=2)
    manager.poll()
    references: dict[int, list[weakref.ref]] = {}
    for version in range(2, 8):
        publish(saved_models / "cartpole" / str(1 + version % 2), base, version)
        prune_versions(base, 3)  # more on disk than loaded, as the trainer keeps them
        manager.poll()
        assert manager.versions() == [version - 1, version]
        servable = manager.get(version)
        references[version] = weak_references(servable)[0]
        del servable
    gc.collect()
    alive = sorted(v for v, refs in references.items() if not released(refs))
    assert alive == [6, 7]
    assert len(manager.statuses()) <= 32  # the status history is bounded too


def test_a_version_is_available_only_once_requests_find_it(saved_models, tmp_path):
    base = tmp_path / "muzero"
    publish(saved_models / "cartpole" / "1", base, 1)
    publish(saved_models / "cartpole" / "2", base, 2)
    seen: list[tuple[str, bool]] = []

    def loader(path: str, version: int) -> LoadedModel:
        if version == 1:  # loaded after version 2 (newest first) in the same poll
            try:
                manager.get(2)
                found = True
            except NotFound:
                found = False
            seen.append((manager.statuses()[2].state, found))
        return LoadedModel(path, version)

    manager = manager_of(base, num_versions=2, loader=loader)
    manager.poll()

    # While version 1 loaded, version 2 was loaded and warm but not yet served: GetModelStatus
    # must not call it AVAILABLE then, or a client that waited for it and pins it gets NOT_FOUND.
    assert seen == [("LOADING", False)]
    assert {v: s.state for v, s in manager.statuses().items()} == {1: "AVAILABLE", 2: "AVAILABLE"}
    assert manager.get(2).version == 2
