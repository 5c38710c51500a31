"""The trainer: MuZero's loss on replay batches, exported versions, checkpoints, summaries.

    trainer = Trainer(config)                    # builds network + optimizer on the device
    step = trainer.start()                       # restore (--resume), export the current step
    trainer.train(batches, priority_sink, stop)  # until config.steps, StopIteration or `stop`

`batches` is any iterator of batch dicts (`prepare_batch`); `priority_sink(record_keys,
positions, priorities)` receives the new priorities of every batch that carries record keys.
Nothing here talks gRPC: `__main__` wires a `Prefetcher` and a `PrioritySender` to a
ReplayClient; tests pass lists of hand-made batches.

Steps and versions: `step` counts completed training steps. Version v is the network after v
steps. Versions are exported at step 0 (before training) and every export_interval steps, and
at the end of a --steps run; a checkpoint is always written *before* a version is exported, so
no version is ever ahead of the newest checkpoint and a resumed run never re-exports a number
with different weights.

Writes off the training thread: at an export or checkpoint step the training thread copies the
network, the optimizer (slots, iteration count) and the step into a second set of variables on
the same device (the snapshot: one compiled call, about a millisecond) and hands the writing of
that snapshot to one background thread; training goes on meanwhile. At most one write is in
flight: when the next one is due before the previous has finished, the training thread waits
for it (`mufleet_trainer_snapshot_wait_seconds`), so every due checkpoint and version is written,
each of exactly its step. `save_checkpoint()`, `export()` and the end of `train()` write
synchronously: they return once the files are on disk.

With `training.ema_decay` > 0 the trainer also keeps an exponential moving average of the
network's variables, updated inside the compiled step; it is part of the checkpoint (and of the
snapshot), and versions are exported from it instead of from the step's own weights.
"""

from __future__ import annotations

import concurrent.futures
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from models.export import VersionExporter, list_versions, prune_versions, remove_stale_temporaries
from models.networks import MuZeroNetwork
from services.common.logs import EventLogger, get_logger
from services.trainer.config import TrainerConfig
from services.trainer.losses import Losses, add_l2, batch_keys, batch_signature, l2_loss, muzero_loss
from services.trainer.metrics import TrainerMetrics
from services.trainer.prefetch import augment_batch, prepare_batch

PrioritySink = Callable[[np.ndarray, np.ndarray, np.ndarray], None]


class CheckpointExists(RuntimeError):
    """checkpoint_dir holds checkpoints but resume was not asked for; the message says what to
    do (continue with resume, or remove the run's directories)."""


class CheckpointMismatch(ValueError):
    """The newest checkpoint does not fit this network (another game or other settings)."""


class StepResult(NamedTuple):
    """What one training step reports (NumPy / Python values)."""

    step: int
    loss: float
    value_loss: float
    reward_loss: float
    policy_loss: float
    l2: float
    gradient_norm: float
    priorities: np.ndarray
    value_prediction: np.ndarray
    consistency_loss: float = 0.0  # the consistency term before its weight (0 when off)
    # Stochastic MuZero's terms before their weights (0 for other networks).
    afterstate_value_loss: float = 0.0
    chance_loss: float = 0.0
    commitment_loss: float = 0.0
    diversity_loss: float = 0.0
    code_perplexity: float = 0.0


def select_device(log: EventLogger | None = None) -> str:
    """"/GPU:0" when TensorFlow sees a GPU, else "/CPU:0"; logs the event `device`.

    GPUs get memory growth, so the trainer does not take all GPU memory from a network server
    that shares the card.
    """
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialized: growth can no longer change
            pass
    if gpus:
        device = "/GPU:0"
        try:
            description = tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)
        except Exception:  # details are informative only
            description = gpus[0].name
    else:
        device = "/CPU:0"
        description = platform.processor() or platform.machine() or "cpu"
    if log is not None:
        log.info("device", device=device, name=description, gpus=[g.name for g in gpus],
                 cpu_count=os.cpu_count())
    return device


def make_optimizer(settings) -> keras.optimizers.Optimizer:
    """Adam or SGD (momentum 0.9) with learning_rate * lr_decay_rate ** (step / lr_decay_steps)."""
    schedule = keras.optimizers.schedules.ExponentialDecay(
        settings.training.learning_rate, settings.training.lr_decay_steps, settings.training.lr_decay_rate, staircase=False)
    if settings.training.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=schedule)
    return keras.optimizers.SGD(learning_rate=schedule, momentum=0.9)


def learning_rate_at(settings, step: int) -> float:
    """The schedule's learning rate after `step` optimizer steps."""
    return float(settings.training.learning_rate * settings.training.lr_decay_rate ** (step / settings.training.lr_decay_steps))


# TensorBoard's scalar plugin metadata, so event files are written without the tensorboard
# package (tf.summary.scalar needs it; tf.summary.write does not).
def _scalar_metadata() -> bytes:
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    return metadata.SerializeToString()


class Summaries:
    """TensorBoard scalars in `logdir` (created lazily)."""

    def __init__(self, logdir: str) -> None:
        self.logdir = logdir
        self._writer = None
        self._metadata = _scalar_metadata()

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if self._writer is None:
            Path(self.logdir).mkdir(parents=True, exist_ok=True)
            self._writer = tf.summary.create_file_writer(self.logdir)
        with tf.device("/CPU:0"), self._writer.as_default():
            for tag, value in values.items():
                tf.summary.write(tag, tf.constant(float(value), tf.float32), step=step,
                                 metadata=self._metadata)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class _Pending(NamedTuple):
    """A dispatched step whose outputs the loop has not read yet."""

    step: int
    batch: Mapping[str, Any]
    outputs: tuple[tf.Tensor, tf.Tensor, tf.Tensor]  # scalars [6 or 7], priorities [B], value_prediction [B]
    host_seconds: float  # the loop's time on this step so far (dispatch)


class Trainer:
    """Trains one MuZeroNetwork; see the module docstring.

    Args:
      config: what to train and where to write.
      log: structured logger (default: the "trainer" logger on stderr).
      metrics: Prometheus metrics (default: a private registry).
      device: "/GPU:0" or "/CPU:0" (default: `select_device`, which logs it).

    Attributes:
      network, optimizer: the model and its Keras optimizer (built, so its slots exist).
      step: tf.Variable int64, completed training steps (checkpointed).
      checkpoint: tf.train.Checkpoint(network, optimizer, step) of the live objects (what a
        resume restores into).
      manager: the CheckpointManager that writes checkpoints, of the snapshot (the same object
        graph as `checkpoint`, so either restores the other's files).
      average_network: with training.ema_decay > 0, the moving average of `network`'s
        variables that versions are exported from (in the checkpoint as "average"); else None.
    """

    def __init__(self, config: TrainerConfig, log: EventLogger | None = None,
                 metrics: TrainerMetrics | None = None, device: str | None = None) -> None:
        self.config = config
        self.settings = config.settings
        self.log = log or get_logger("trainer")
        self.metrics = metrics or TrainerMetrics()
        self.device = device or select_device(self.log)
        if config.seed is not None:
            tf.random.set_seed(config.seed)
        with tf.device(self.device):
            self.network = MuZeroNetwork(config.spec, config.settings, seed=config.seed)
            self.optimizer = make_optimizer(config.settings)
            self.optimizer.build(self.network.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            # The snapshot: the same objects once more, built after the live ones so that their
            # initial values (seeded) do not change. Checkpoints and versions are written from
            # it, on the writer thread, while training updates the live variables.
            self._snapshot_network = MuZeroNetwork(config.spec, config.settings, seed=config.seed)
            self._snapshot_optimizer = make_optimizer(config.settings)
            self._snapshot_optimizer.build(self._snapshot_network.trainable_variables)
            self._snapshot_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            # With ema_decay the exported network is a moving average of the live one (and its
            # snapshot copy); built last, so nothing above draws other initial values.
            self.ema_decay = float(config.settings.training.ema_decay)
            self.average_network: MuZeroNetwork | None = None
            self._snapshot_average: MuZeroNetwork | None = None
            if self.ema_decay > 0:
                self.average_network = MuZeroNetwork(config.spec, config.settings, seed=config.seed)
                self._snapshot_average = MuZeroNetwork(config.spec, config.settings, seed=config.seed)
        averaged = [] if self.average_network is None else list(self.average_network.variables)
        live = [*self.network.variables, *self.optimizer.variables, self.step, *averaged]
        copies = [*self._snapshot_network.variables, *self._snapshot_optimizer.variables,
                  self._snapshot_step,
                  *([] if self._snapshot_average is None else self._snapshot_average.variables)]
        if len(live) != len(copies) or any(a.shape != b.shape or a.dtype != b.dtype
                                            for a, b in zip(live, copies)):
            raise RuntimeError("the snapshot's variables do not match the trainer's")
        self._snapshot_pairs = list(zip(copies, live))
        self._copy_snapshot = tf.function(self._copy_snapshot_fn, autograph=False)
        # (average, live) variable pairs of the moving average; empty without ema_decay.
        self._average_pairs = list(zip(averaged, self.network.variables))
        if any(a.shape != b.shape or a.dtype != b.dtype for a, b in self._average_pairs) or (
                averaged and len(averaged) != len(self.network.variables)):
            raise RuntimeError("the moving average's variables do not match the network's")
        self._reset_average = tf.function(self._reset_average_fn, autograph=False)
        average = {} if self.average_network is None else {"average": self.average_network}
        self.checkpoint = tf.train.Checkpoint(network=self.network, optimizer=self.optimizer,
                                              step=self.step, **average)
        snapshot_average = {} if self._snapshot_average is None else {"average": self._snapshot_average}
        self._snapshot_checkpoint = tf.train.Checkpoint(
            network=self._snapshot_network, optimizer=self._snapshot_optimizer,
            step=self._snapshot_step, **snapshot_average)
        self.manager = tf.train.CheckpointManager(self._snapshot_checkpoint, config.checkpoint_dir,
                                                  max_to_keep=config.keep_checkpoints,
                                                  checkpoint_name="ckpt")
        # Versions are the snapshot of the moving average where there is one.
        self._exporter = VersionExporter(self._snapshot_average or self._snapshot_network)
        # One writer thread: at most one checkpoint/export in flight (the snapshot is one).
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="trainer-writer")
        self._writing: concurrent.futures.Future | None = None
        self.summaries = Summaries(config.summary_dir)
        self.models_dir = Path(config.models_dir)
        self._checkpointed_step: int | None = None
        self.latest_version: int | None = None  # newest version in models_dir, once known
        # With the consistency loss or Stochastic MuZero the step also reads unroll_observations;
        # without them nothing of it exists (the signature, the graph and the replay request are
        # as before).
        self.consistency_weight = config.consistency_weight
        self.stochastic = config.stochastic
        self._batch_keys = batch_keys(config.unroll_observations)
        self._signature = batch_signature(config.spec, config.num_unroll_steps, config.unroll_observations)
        self._train_step = tf.function(self._train_step_fn, input_signature=[self._signature],
                                       jit_compile=config.jit_compile or None, reduce_retracing=True)
        self._train_step_concrete = None  # traced at the first step: calling it skips the
        # tf.function's per-call signature matching and casting (0.5 ms of the training thread)
        self._losses = tf.function(self._losses_fn, input_signature=[self._signature],
                                   reduce_retracing=True)

    # -- the compiled step ----------------------------------------------------------------------

    def compute_losses(self, batch: Mapping[str, Any]) -> Losses:
        """The losses of `batch` (a prepared batch dict) without updating anything; batch norm
        uses its moving statistics (training=False)."""
        return self._losses(self._tensors(batch))

    def _losses_eager(self, batch, training: bool) -> Losses:
        with tf.device(self.device):
            losses = muzero_loss(self.network, batch, self.settings.network.support_size,
                                 value_loss_weight=self.config.value_loss_weight,
                                 gradient_scale=self.config.gradient_scale,
                                 train_past_end=self.config.train_past_end, training=training,
                                 consistency_weight=self.consistency_weight,
                                 chance_loss_weight=self.settings.training.chance_loss_weight,
                                 commitment_weight=self.settings.training.commitment_weight,
                                 diversity_weight=self.settings.training.diversity_weight)
            return add_l2(losses, l2_loss(self.network.trainable_variables, self.settings.training.weight_decay))

    def _losses_fn(self, batch) -> Losses:
        return self._losses_eager(batch, training=False)

    def _train_step_fn(self, batch):
        with tf.device(self.device):
            variables = self.network.trainable_variables
            with tf.GradientTape() as tape:
                losses = self._losses_eager(batch, training=True)
            gradients = tape.gradient(losses.total, variables)
            if self.config.max_grad_norm > 0:
                gradients, norm = tf.clip_by_global_norm(gradients, self.config.max_grad_norm)
            else:
                norm = tf.linalg.global_norm(gradients)
            self.optimizer.apply_gradients(zip(gradients, variables))
            self.step.assign_add(1)
            if self._average_pairs:
                self._update_average()
            # One tensor of scalars: a single device-to-host copy per step on a GPU.
            terms = [losses.total, losses.value, losses.reward, losses.policy, losses.l2, norm]
            if self.consistency_weight > 0:
                terms.append(losses.consistency)
            if self.stochastic:
                terms.extend([losses.afterstate_value, losses.chance, losses.commitment, losses.diversity,
                              losses.code_perplexity])
            scalars = tf.stack(terms)
        return scalars, losses.priorities, losses.value_prediction

    def _update_average(self) -> None:
        """average <- d * average + (1 - d) * live for every network variable, with the
        warmed-up decay d = min(ema_decay, (1 + step) / (10 + step)) of the step just done
        (TensorFlow's ExponentialMovingAverage with num_updates); variables that are not
        floating point are copied."""
        step = tf.cast(self.step, tf.float32)
        decay = tf.minimum(tf.constant(self.ema_decay, tf.float32), (1.0 + step) / (10.0 + step))
        for average, live in self._average_pairs:
            dtype = tf.as_dtype(live.dtype)  # Keras variables name theirs as a string
            if dtype.is_floating:
                average.assign(tf.cast(decay, dtype) * average + tf.cast(1.0 - decay, dtype) * live)
            else:
                average.assign(live)

    def _reset_average_fn(self) -> None:
        with tf.device(self.device):
            for average, live in self._average_pairs:
                average.assign(live)

    def _copy_snapshot_fn(self) -> None:
        with tf.device(self.device):
            for copy, live in self._snapshot_pairs:
                copy.assign(live)

    def _tensors(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        tensors = {}
        for name in self._batch_keys:
            value = _entry(batch, name)
            # Staged batches (`stage`) already hold tensors of the right dtype.
            tensors[name] = value if isinstance(value, tf.Tensor) else np.asarray(
                value, self._signature[name].dtype.as_numpy_dtype)
        return tensors

    def stage(self, batch: dict[str, Any]) -> dict[str, Any]:
        """`batch` (a prepared batch dict) with the step's inputs as tensors on the trainer's
        device; the host entries (record_keys, positions, model_version) stay NumPy. Meant for
        the prefetch thread: the conversion (and on a GPU the copy to the device) then happens
        there, not on the training thread."""
        staged = dict(batch)
        for name in self._batch_keys:
            array = np.asarray(_entry(batch, name), self._signature[name].dtype.as_numpy_dtype)
            if self.device.startswith("/CPU"):
                staged[name] = tf.constant(array)  # a host tensor: no op to run (0.02 ms each)
            else:
                with tf.device(self.device):
                    staged[name] = tf.identity(array)  # copied to the device here
        return staged

    def train_step(self, batch: Mapping[str, Any]) -> StepResult:
        """One optimizer step on `batch` (a prepared batch dict); returns losses and priorities.

        FloatingPointError if the loss is not finite (the weights are then not trustworthy;
        the last checkpoint is).
        """
        outputs = self._dispatch(batch)
        return self._result(int(self.step.numpy()), outputs)

    def _dispatch(self, batch: Mapping[str, Any]):
        """Runs (on a GPU: enqueues) one train step; returns its output tensors unread."""
        if self._train_step_concrete is None:
            self._train_step_concrete = self._train_step.get_concrete_function()
        return self._train_step_concrete(self._tensors(batch))

    def _result(self, step: int, outputs) -> StepResult:
        """The StepResult of step `step` from its outputs (reading them waits for the step);
        FloatingPointError (logged) if its loss is not finite."""
        scalars, priorities, value_prediction = outputs
        total, value, reward, policy, l2, norm, *rest = (float(x) for x in scalars.numpy())
        consistency = rest.pop(0) if self.consistency_weight > 0 else 0.0
        afterstate_value, chance, commitment, diversity, perplexity = rest if self.stochastic else (0.0,) * 5
        result = StepResult(step=step, loss=total, value_loss=value, reward_loss=reward,
                            policy_loss=policy, l2=l2, gradient_norm=norm,
                            priorities=priorities.numpy(), value_prediction=value_prediction.numpy(),
                            consistency_loss=consistency, afterstate_value_loss=afterstate_value,
                            chance_loss=chance, commitment_loss=commitment, diversity_loss=diversity,
                            code_perplexity=perplexity)
        if not np.isfinite(result.loss):
            extra = {"consistency_loss": result.consistency_loss} if self.consistency_weight > 0 else {}
            if self.stochastic:
                extra.update(afterstate_value_loss=afterstate_value, chance_loss=chance, commitment_loss=commitment)
            self.log.error("non_finite_loss", step=result.step, loss=result.loss,
                           value_loss=result.value_loss, reward_loss=result.reward_loss,
                           policy_loss=result.policy_loss, gradient_norm=result.gradient_norm, **extra)
            raise FloatingPointError(f"loss is {result.loss} at step {result.step}")
        return result

    # -- checkpoints and versions ---------------------------------------------------------------

    @property
    def current_step(self) -> int:
        return int(self.step.numpy())

    def learning_rate(self) -> float:
        return learning_rate_at(self.settings, int(self.optimizer.iterations.numpy()))

    def restore(self) -> int | None:
        """Restores the newest checkpoint if there is one and `config.resume`; returns its step.

        CheckpointExists if there is a checkpoint but resume is off; CheckpointMismatch (a
        ValueError) if the checkpoint does not fit this network (another game or other
        settings). Both messages say what to do.
        """
        latest = self.manager.latest_checkpoint
        if latest is None:
            return None
        config = self.config
        start_over = (f"remove {config.checkpoint_dir} and {config.models_dir} (its model versions) "
                      f"to start over, or pass another --checkpoint-dir and --models")
        if not config.resume:
            raise CheckpointExists(
                f"--checkpoint-dir {config.checkpoint_dir} holds a checkpoint of an earlier run "
                f"({Path(latest).name}): pass --resume to continue that run; or {start_over}")
        try:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as error:
            heads = (" (with consistency_weight > 0 the network has consistency heads, which a "
                     "checkpoint of a run without the consistency loss lacks)"
                     if self.network.consistency is not None else "")
            if self.average_network is not None:
                heads += (" (with ema_decay > 0 the checkpoint holds the weights' moving average, "
                          "which a checkpoint of a run without ema_decay lacks)")
            raise CheckpointMismatch(
                f"checkpoint {latest} does not fit the {self.settings.network.architecture} network of "
                f"{config.spec.name} with these settings{heads}: run with the --game and network "
                f"settings that wrote it, or {start_over} ({_first_line(str(error))})") from error
        step = self.current_step
        self._checkpointed_step = step
        return step

    def save_checkpoint(self) -> str | None:
        """Writes a checkpoint of the current step (nothing if one exists already); returns
        once it is on disk (after any background write in flight)."""
        self.wait_for_writes()
        step = self.current_step
        if self._checkpointed_step == step:
            return None
        self._copy_snapshot()
        return self._write_checkpoint(step)

    def export(self) -> Path | None:
        """Checkpoints, then exports the current step as a version (atomically) and prunes to
        keep_versions; None (and a warning) if that version exists already. Returns once both
        are on disk (after any background write in flight)."""
        self.wait_for_writes()
        step = self.current_step
        self._copy_snapshot()
        self._write_checkpoint(step)
        return self._write_version(step)

    def wait_for_writes(self) -> float:
        """Blocks until the background write in flight (if any) has finished and re-raises its
        error; returns the seconds waited."""
        writing, self._writing = self._writing, None
        if writing is None:
            return 0.0
        started = time.perf_counter()
        writing.result()
        return time.perf_counter() - started

    def _write_in_background(self, step: int, export: bool) -> None:
        """Snapshots step `step` (the live variables' step now) and writes its checkpoint (and
        with `export` its version) on the writer thread; first waits for the write before."""
        waited = self.wait_for_writes()
        self.metrics.snapshot_wait_seconds.observe(waited)
        self._copy_snapshot()
        self._writing = self._writer.submit(self._write_snapshot, step, export, waited)

    def _write_snapshot(self, step: int, export: bool, waited: float) -> None:
        self._write_checkpoint(step)
        if export:
            self._write_version(step, waited)

    def _write_checkpoint(self, step: int) -> str | None:
        """Writes the snapshot (of step `step`) as checkpoint ckpt-<step>, unless one exists."""
        if self._checkpointed_step == step:
            return None
        started = time.perf_counter()
        path = self.manager.save(checkpoint_number=step)
        self._checkpointed_step = step
        self.metrics.checkpoints.inc()
        self.log.info("checkpoint", step=step, path=path, seconds=round(time.perf_counter() - started, 3))
        return path

    def _write_version(self, step: int, waited: float = 0.0) -> Path | None:
        """Exports the snapshot (of step `step`) as version `step` and prunes; None (and a
        warning) if that version exists."""
        if (self.models_dir / str(step)).exists():
            self.log.warning("version_exists", version=step, path=str(self.models_dir / str(step)),
                             message="kept the existing version; not exported again")
            return None
        started = time.perf_counter()
        path = self._exporter.export(self.models_dir, step)
        pruned = prune_versions(self.models_dir, self.config.keep_versions)
        seconds = time.perf_counter() - started
        self.metrics.exports.inc()
        self.metrics.export_seconds.observe(seconds)
        self.metrics.exported_version.set(step)
        self.latest_version = max(step, self.latest_version or 0)
        self.log.info("exported", version=step, path=str(path), seconds=round(seconds, 3),
                      pruned=pruned, waited_s=round(waited, 3))
        return path

    def start(self) -> int:
        """Restores (with resume), removes leftovers of crashed exports, and exports the current
        step if that version does not exist yet; returns the step."""
        restored = self.restore()
        if restored is None and self._average_pairs:
            self._reset_average()  # a new run's average starts at its initial weights
        step = self.current_step
        removed = remove_stale_temporaries(self.models_dir)
        versions = list_versions(self.models_dir)
        self.log.info("started", step=step, resumed=restored is not None,
                      checkpoint=self.manager.latest_checkpoint, versions=versions[-5:],
                      removed_temporaries=removed, network=self.network.summary(),
                      batch_size=self.settings.training.batch_size, num_unroll_steps=self.config.num_unroll_steps,
                      learning_rate=self.learning_rate(), optimizer=self.settings.training.optimizer,
                      **({"consistency_weight": self.consistency_weight} if self.consistency_weight > 0 else {}),
                      **({"ema_decay": self.ema_decay} if self.ema_decay > 0 else {}))
        self.metrics.steps.inc(step)
        if versions:
            self.latest_version = versions[-1]
            self.metrics.exported_version.set(versions[-1])
        if step in versions:
            self.save_checkpoint()
        else:
            self.export()
        self.metrics.learning_rate.set(self.learning_rate())
        return step

    # -- the loop -------------------------------------------------------------------------------

    def train(self, batches: Iterable[Mapping[str, Any]], priority_sink: PrioritySink | None = None,
              stop: threading.Event | None = None) -> int:
        """Trains until config.steps (then checkpoint + export), until `batches` ends or until
        `stop` is set (then checkpoint); returns the final step once the last checkpoint (and
        version) is on disk.

        The loop reads a step's outputs (losses, priorities) only after it has dispatched the
        next step, so that on a GPU the host's work for step N (the priority update, metrics)
        overlaps step N+1 on the device; at a step that is checkpointed or exported it reads
        them at once, so no snapshot of a non-finite step is ever written.
        """
        config = self.config
        stop = stop or threading.Event()
        iterator = iter(batches)
        step = self.current_step  # counted here from now on: a variable read costs a sync
        self._iterations = int(self.optimizer.iterations.numpy())
        self._window = (time.perf_counter(), step, 0.0)  # (started, step, batch wait seconds)
        self._model_versions: list[int] = []
        export_interval = self.settings.training.export_interval
        pending: _Pending | None = None
        try:
            while not stop.is_set() and (config.steps == 0 or step < config.steps):
                waited = time.perf_counter()
                try:
                    batch = next(iterator)
                except StopIteration:
                    break
                if stop.is_set():  # stopped while waiting: do not start another step
                    break
                started = time.perf_counter()
                waited = started - waited
                self.metrics.batch_wait_seconds.observe(waited)
                self._window = (*self._window[:2], self._window[2] + waited)
                outputs = self._dispatch(batch)
                step += 1
                current = _Pending(step, batch, outputs, time.perf_counter() - started)
                if pending is not None:
                    self._finish(pending, priority_sink)
                pending = None
                writes = step % export_interval == 0 or step % config.checkpoint_interval == 0
                if writes or (config.steps and step >= config.steps):
                    self._finish(current, priority_sink)
                    if step % export_interval == 0:
                        self._write_in_background(step, export=True)
                    elif step % config.checkpoint_interval == 0:
                        self._write_in_background(step, export=False)
                else:
                    pending = current
            if pending is not None:
                self._finish(pending, priority_sink)
        except BaseException:
            self._settle_writes()
            raise
        finally:
            self.summaries.flush()
        self.wait_for_writes()
        reason = ("steps" if config.steps and step >= config.steps
                  else "stopped" if stop.is_set() else "batches_ended")
        if reason == "steps" and not (self.models_dir / str(step)).exists():
            self.export()  # writes the checkpoint first
        else:
            self.save_checkpoint()
        self.log.info("finished", step=step, reason=reason)
        return step

    def _settle_writes(self) -> None:
        """Waits for the write in flight while an error ends the loop; its own failure is logged,
        not raised, so that it does not hide the error that ended the loop."""
        try:
            self.wait_for_writes()
        except Exception as error:  # noqa: BLE001 - reported, the loop's error goes on
            self.log.error("write_failed", error=repr(error))

    def _finish(self, pending: _Pending, priority_sink: PrioritySink | None) -> None:
        """Reads a dispatched step's outputs and does the host's part of it: priorities,
        metrics, the `train` line every log_interval steps."""
        read = time.perf_counter()
        result = self._result(pending.step, pending.outputs)
        metrics, batch = self.metrics, pending.batch
        metrics.step_seconds.observe(pending.host_seconds + time.perf_counter() - read)
        if priority_sink is not None and "record_keys" in batch:
            priority_sink(batch["record_keys"], batch["positions"], result.priorities)
        if "model_version" in batch:
            self._model_versions.append(int(np.min(batch["model_version"])))
        self._iterations += 1
        metrics.steps.inc()
        metrics.gradient_norm.set(result.gradient_norm)
        for kind, value in (("total", result.loss), ("value", result.value_loss),
                            ("reward", result.reward_loss), ("policy", result.policy_loss)):
            metrics.loss.labels(kind).set(value)
        if self.consistency_weight > 0:  # the series exists only with the loss on
            metrics.loss.labels("consistency").set(result.consistency_loss)
        if self.stochastic:
            for kind, value in (("afterstate_value", result.afterstate_value_loss),
                                ("chance", result.chance_loss), ("commitment", result.commitment_loss),
                                ("diversity", result.diversity_loss)):
                metrics.loss.labels(kind).set(value)
        learning_rate = learning_rate_at(self.settings, self._iterations)
        metrics.learning_rate.set(learning_rate)
        if result.step % self.config.log_interval == 0:
            now = time.perf_counter()
            window_start, window_step, window_wait = self._window
            steps_per_second = (result.step - window_step) / max(now - window_start, 1e-9)
            metrics.steps_per_second.set(steps_per_second)
            self._report(result, learning_rate, steps_per_second,
                         window_wait / max(result.step - window_step, 1), self._model_versions)
            self._window, self._model_versions = (now, result.step, 0.0), []

    def run(self, batches: Iterable[Mapping[str, Any]], priority_sink: PrioritySink | None = None,
            stop: threading.Event | None = None, on_ready: Callable[[int], None] | None = None) -> int:
        """`start()`, then `on_ready(step)`, then `train(...)`."""
        step = self.start()
        if on_ready is not None:
            on_ready(step)
        return self.train(batches, priority_sink, stop)

    def _report(self, result: StepResult, learning_rate: float, steps_per_second: float,
                batch_wait_s: float, model_versions: list[int]) -> None:
        fields = dict(step=result.step, loss=round(result.loss, 5), value_loss=round(result.value_loss, 5),
                      reward_loss=round(result.reward_loss, 5), policy_loss=round(result.policy_loss, 5),
                      l2=round(result.l2, 6), gradient_norm=round(result.gradient_norm, 4),
                      learning_rate=learning_rate, steps_per_second=round(steps_per_second, 2),
                      batch_wait_s=round(batch_wait_s, 4),
                      value_prediction=round(float(np.mean(result.value_prediction)), 4),
                      priority=round(float(np.mean(result.priorities)), 4))
        if self.consistency_weight > 0:
            fields["consistency_loss"] = round(result.consistency_loss, 5)
        if self.stochastic:
            fields.update(afterstate_value_loss=round(result.afterstate_value_loss, 5),
                          chance_loss=round(result.chance_loss, 5),
                          commitment_loss=round(result.commitment_loss, 5),
                          diversity_loss=round(result.diversity_loss, 5),
                          code_perplexity=round(result.code_perplexity, 3))
        if model_versions:
            fields["oldest_model_version"] = min(model_versions)
        self.log.info("train", **fields)
        scalars = {
            "loss/total": result.loss, "loss/value": result.value_loss,
            "loss/reward": result.reward_loss, "loss/policy": result.policy_loss, "loss/l2": result.l2,
            "train/gradient_norm": result.gradient_norm, "train/learning_rate": learning_rate,
            "train/steps_per_second": steps_per_second, "train/batch_wait_seconds": batch_wait_s,
            "train/value_prediction": float(np.mean(result.value_prediction)),
            "train/priority": float(np.mean(result.priorities))}
        if self.consistency_weight > 0:
            scalars["loss/consistency"] = result.consistency_loss
        if self.stochastic:
            scalars.update({"loss/afterstate_value": result.afterstate_value_loss,
                            "loss/chance": result.chance_loss, "loss/commitment": result.commitment_loss,
                            "loss/diversity": result.diversity_loss, "train/code_perplexity": result.code_perplexity})
        self.summaries.scalars(result.step, scalars)

    def close(self) -> None:
        """Waits for a background write in flight, stops the writer thread, closes summaries."""
        try:
            self.wait_for_writes()
        finally:
            self._writer.shutdown(wait=True)
            self.summaries.close()

def _entry(batch: Mapping[str, Any], name: str) -> Any:
    """batch[name]; a ValueError that says why for the consistency loss's unroll_observations."""
    try:
        return batch[name]
    except KeyError:
        if name == "unroll_observations":
            raise ValueError("batch: unroll_observations is missing: with consistency_weight > 0 or "
                             "network.chance_codes > 0 every batch needs the observations at t+k, "
                             "[B, K+1, *obs]") from None
        raise


def _first_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0].strip() if lines else text


def prepare(config: TrainerConfig) -> Callable[[Any], dict[str, np.ndarray]]:
    """`prepare_batch` for this config's game and K (with `unroll_observations` when the
    consistency loss is on), then `augment_batch` when the config has symmetries. The returned function is meant for one thread (it holds a random generator)."""
    unroll = config.unroll_observations  # the consistency targets / chance encoder's inputs
    prefix = config.settings.training.value_prefix
    horizon = config.settings.training.value_prefix_horizon

    def checked(batch):
        return prepare_batch(batch, config.spec, config.num_unroll_steps, unroll, prefix, horizon)

    if config.symmetries is None:
        return checked
    symmetries = config.symmetries
    rng = np.random.default_rng(config.seed)
    return lambda batch: augment_batch(checked(batch), symmetries, rng)
