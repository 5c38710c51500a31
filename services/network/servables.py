"""Loaded model versions: discovery on disk, loading, warm-up, the kept window, eviction.

A `ModelManager` owns one model's base path. `poll()` (called at startup and then every
file_system_poll_wait_seconds by the server's poller thread) lists the integer-named
directories, loads and warms the versions the version policy wants, then swaps the new set in
with one assignment, so a request sees either the old set or the new one, never a version that
is still loading; GetModelStatus reports a version AVAILABLE only from that swap on, so a client
that waited for AVAILABLE can pin it at once. Versions that fell out of the window are dropped
in the same step; requests already running on them finish normally (they hold a reference),
and nothing else in the server keeps one (no cache, metric label or batch queue per version
outlives it), so an evicted version's SavedModel is freed (tests/network/test_servables_release.py).

Rules:
  * Names that are not all digits (".tmp-5-<uuid>", ".deleting-3-...") are not versions.
  * A version that fails to load or warm is logged, reported END with its error by
    GetModelStatus, does not count toward `num_versions`, and is retried when its directory
    changes (e.g. a copy completes) or after a backoff that doubles up to 60 s.
  * The newest loaded version is never unloaded because its directory vanished, so the
    version that unpinned requests get never goes backwards; it is replaced only by a newer one.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import time
from typing import Callable

import numpy as np
from prometheus_client import CollectorRegistry
from tensorflow_serving.apis import get_model_metadata_pb2

from models.export import LoadedModel, is_version_name
from services.common.logs import EventLogger
from services.network.config import ModelEntry
from services.network.metrics import NetworkMetrics

MAX_RETRY_BACKOFF_S = 60.0
STATUS_HISTORY = 32


class NotFound(Exception):
    """A model, version or label that is not served (gRPC NOT_FOUND)."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """A signature input or output: NumPy dtype and shape ([None, ...]: None is the batch)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]

    def describe(self) -> str:
        dims = ", ".join("-1" if d is None else str(d) for d in self.shape)
        return f"{self.dtype.name} [{dims}]"


class Signature:
    """One signature of one loaded version, called with NumPy."""

    def __init__(self, name: str, runner: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
                 inputs: dict[str, TensorInfo], outputs: dict[str, TensorInfo], num_actions: int | None) -> None:
        self.name = name
        self.runner = runner
        self.inputs = inputs
        self.outputs = outputs
        self.input_names = tuple(sorted(inputs))
        self.output_names = tuple(sorted(outputs))
        # MuFleet's models take `action` in [0, A) (a stochastic model's chance_inference
        # `chance_code` in [0, C)); checked before batching, so that one bad request cannot
        # fail the merged batch it would have joined.
        self.index_input = next((name for name in ("action", "chance_code") if name in inputs), None)
        self.action_range = num_actions if self.index_input is not None else None

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """NumPy inputs by name -> NumPy outputs by name."""
        return self.runner(inputs)


class ServableVersion:
    """One loaded, warmed version of a model."""

    def __init__(self, model_name: str, version: int, loaded: LoadedModel) -> None:
        self.model_name = model_name
        self.version = version
        self.loaded = loaded
        self.signatures: dict[str, Signature] = {}
        for name in loaded.signatures:
            inputs = {k: _tensor_info(k, spec) for k, spec in loaded.input_specs[name].items()}
            outputs = {k: _tensor_info(k, spec) for k, spec in loaded.output_specs[name].items()}
            self.signatures[name] = Signature(name, functools.partial(loaded.run, name), inputs, outputs,
                                              loaded.action_range(name))
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature_def in loaded.signature_defs().items():
            signature_map.signature_def[name].CopyFrom(signature_def)
        self.signature_def_map = signature_map

    def warm_up(self) -> None:
        """Runs every signature once on a one-row batch of zeros (raises if that fails)."""
        for signature in self.signatures.values():
            dummy = {name: np.zeros([1 if d is None else d for d in info.shape], info.dtype)
                     for name, info in signature.inputs.items()}
            signature.run(dummy)


def _tensor_info(name: str, spec) -> TensorInfo:
    shape = tuple(None if d is None else int(d) for d in spec.shape.as_list())
    return TensorInfo(name=name, dtype=np.dtype(spec.dtype.as_numpy_dtype), shape=shape)


@dataclasses.dataclass
class VersionStatus:
    """What GetModelStatus reports for one version."""

    state: str  # "LOADING", "AVAILABLE", "UNLOADING" or "END" (TensorFlow Serving's names)
    error: str = ""


@dataclasses.dataclass
class _Failure:
    fingerprint: tuple
    attempts: int
    retry_at: float


class ModelManager:
    """The loaded versions of one model and the loop that keeps them current."""

    def __init__(self, entry: ModelEntry, log: EventLogger,
                 loader: Callable[[str, int], LoadedModel] | None = None,
                 metrics: NetworkMetrics | None = None) -> None:
        self.entry = entry
        self.metrics = metrics = metrics if metrics is not None else NetworkMetrics(CollectorRegistry())
        self.name = entry.name
        self.log = log
        self.labels = dict(entry.version_labels)
        self._loader = loader or (lambda path, version: LoadedModel(path, version))
        self._versions: dict[int, ServableVersion] = {}  # replaced, never mutated in place
        self._latest: ServableVersion | None = None
        self._status: dict[int, VersionStatus] = {}
        self._failures: dict[int, _Failure] = {}
        self._status_lock = threading.Lock()
        self._poll_lock = threading.Lock()
        metrics.loaded_versions.labels(self.name).set(0)
        metrics.latest_version.labels(self.name).set(-1)

    # -- serving side -------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self._latest is not None

    def versions(self) -> list[int]:
        """Loaded versions, ascending."""
        return sorted(self._versions)

    def get(self, version: int | None = None, label: str = "") -> ServableVersion:
        """The newest version, a pinned one, or a labelled one; NotFound naming it otherwise."""
        if label:
            if label not in self.labels:
                raise NotFound(f"model_spec.version_label: model '{self.name}' has no label '{label}'"
                               f" (labels: {', '.join(sorted(self.labels)) or 'none'})")
            version = self.labels[label]
        if version is None:
            latest = self._latest
            if latest is None:
                raise NotFound(f"model_spec.name: model '{self.name}' has no loaded version yet "
                               f"(base path {self.entry.base_path})")
            return latest
        servable = self._versions.get(version)
        if servable is None:
            loaded = ", ".join(map(str, self.versions())) or "none"
            raise NotFound(f"model_spec.version: version {version} of model '{self.name}' is not "
                           f"loaded (loaded: {loaded})")
        return servable

    def statuses(self) -> dict[int, VersionStatus]:
        with self._status_lock:
            return {v: dataclasses.replace(s) for v, s in self._status.items()}

    # -- loading side -------------------------------------------------------------------------

    def poll(self, should_stop: Callable[[], bool] | None = None) -> None:
        """One scan of the base path: load what the policy wants, then evict the rest.

        `should_stop` is asked before each version load; once it says True no further version
        is loaded (a SIGTERM during start-up must not wait for every version to load)."""
        with self._poll_lock:
            self._poll(should_stop or (lambda: False))
            self.metrics.version_polls.labels(self.name).inc()

    def _poll(self, should_stop: Callable[[], bool]) -> None:
        on_disk = self._list_versions()
        loaded = dict(self._versions)
        present = set(on_disk)
        if self._latest is not None:
            present.add(self._latest.version)  # never go backwards because a directory vanished
        candidates = sorted(present, reverse=True)
        if self.entry.version_policy == "specific":
            wanted_set = set(self.entry.specific_versions)
            candidates = [v for v in candidates if v in wanted_set]
        limit = self.entry.num_versions if self.entry.version_policy == "latest" else len(candidates)
        keep: dict[int, ServableVersion] = {}
        for version in candidates:
            if len(keep) >= limit:
                break
            if version in loaded:
                keep[version] = loaded[version]
                continue
            if should_stop():
                continue  # stopping: keep what is loaded, load nothing more
            servable = self._try_load(version)
            if servable is not None:
                keep[version] = servable
        for version in [v for v in self._failures if v not in present]:
            del self._failures[version]  # the broken directory is gone
        if keep.keys() == loaded.keys():
            return
        newest = max(keep) if keep else None
        if self._latest is not None and (newest is None or newest < self._latest.version):
            keep[self._latest.version] = self._latest  # cannot happen by construction; be safe
            newest = self._latest.version
        evicted = sorted(set(loaded) - set(keep))
        with self._status_lock:
            for version in evicted:
                self._status[version] = VersionStatus("END")
            self._versions = keep
            self._latest = keep[newest] if newest is not None else None
            # AVAILABLE only now that get() finds them: a client that saw AVAILABLE (e.g.
            # NetworkClient.wait_until_available) and then pins the version must not get NOT_FOUND.
            for version in keep.keys() - loaded.keys():
                self._status[version] = VersionStatus("AVAILABLE")
            self._trim_status()
        self.metrics.loaded_versions.labels(self.name).set(len(keep))
        self.metrics.latest_version.labels(self.name).set(newest if newest is not None else -1)
        self.log.info("versions_changed", model=self.name, loaded=sorted(keep), latest=newest,
                      evicted=evicted)

    def _list_versions(self) -> list[int]:
        try:
            entries = list(os.scandir(self.entry.base_path))
        except FileNotFoundError:
            return []
        except OSError as error:
            self.log.warning("base_path_unreadable", model=self.name, base_path=self.entry.base_path,
                             error=str(error))
            return []
        versions = []
        for entry in entries:
            if is_version_name(entry.name):
                try:
                    if entry.is_dir():
                        versions.append(int(entry.name))
                except OSError:
                    continue
        return versions

    def _try_load(self, version: int) -> ServableVersion | None:
        path = os.path.join(self.entry.base_path, str(version))
        fingerprint = _fingerprint(path)
        failure = self._failures.get(version)
        now = time.monotonic()
        if failure is not None and failure.fingerprint == fingerprint and now < failure.retry_at:
            return None
        with self._status_lock:
            self._status[version] = VersionStatus("LOADING")
        started = time.perf_counter()
        try:
            servable = ServableVersion(self.name, version, self._loader(path, version))
            servable.warm_up()
        except Exception as error:  # noqa: BLE001 - any load failure must not stop serving
            attempts = (failure.attempts + 1) if failure is not None else 1
            backoff = min(MAX_RETRY_BACKOFF_S, 2.0 ** (attempts - 1))
            self._failures[version] = _Failure(fingerprint, attempts, now + backoff)
            message = f"{type(error).__name__}: {error}".strip()[:2000]
            with self._status_lock:
                self._status[version] = VersionStatus("END", message)
            self.metrics.version_loads.labels(self.name, "error").inc()
            self.log.warning("version_load_failed", model=self.name, version=version, path=path,
                             attempt=attempts, retry_in_s=backoff, error=message)
            return None
        seconds = time.perf_counter() - started
        self._failures.pop(version, None)  # LOADING until _poll swaps it in, then AVAILABLE
        self.metrics.version_loads.labels(self.name, "ok").inc()
        self.metrics.version_load_seconds.observe(seconds)
        self.log.info("version_loaded", model=self.name, version=version, seconds=round(seconds, 3),
                      signatures=sorted(servable.signatures))
        return servable

    def _trim_status(self) -> None:
        if len(self._status) <= STATUS_HISTORY:
            return
        loaded = set(self._versions)
        for version in sorted(self._status):
            if len(self._status) <= STATUS_HISTORY:
                break
            if version not in loaded and self._status[version].state != "LOADING":
                del self._status[version]


def _fingerprint(path: str) -> tuple:
    """Names, sizes and modification times of everything under `path` (changes as it is copied)."""
    items = []
    for directory, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(directory, name)
            try:
                stat = os.stat(full)
            except OSError:
                continue
            items.append((os.path.relpath(full, path), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(items))
