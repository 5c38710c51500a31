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
"""

from __future__ import annotations

import os
import platform
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from models.export import export_version, list_versions, prune_versions, remove_stale_temporaries
from models.networks import MuZeroNetwork
from services.common.logs import EventLogger, get_logger
from services.trainer.config import TrainerConfig
from services.trainer.losses import BATCH_KEYS, Losses, add_l2, batch_signature, l2_loss, muzero_loss
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
      checkpoint, manager: tf.train.Checkpoint(network, optimizer, step) and its manager.
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
        self.checkpoint = tf.train.Checkpoint(network=self.network, optimizer=self.optimizer,
                                              step=self.step)
        self.manager = tf.train.CheckpointManager(self.checkpoint, config.checkpoint_dir,
                                                  max_to_keep=config.keep_checkpoints,
                                                  checkpoint_name="ckpt")
        self.summaries = Summaries(config.summary_dir)
        self.models_dir = Path(config.models_dir)
        self._checkpointed_step: int | None = None
        self.latest_version: int | None = None  # newest version in models_dir, once known
        self._signature = batch_signature(config.spec, config.num_unroll_steps)
        self._train_step = tf.function(self._train_step_fn, input_signature=[self._signature],
                                       jit_compile=config.jit_compile or None, reduce_retracing=True)
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
                                 train_past_end=self.config.train_past_end, training=training)
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
            # One tensor of scalars: a single device-to-host copy per step on a GPU.
            scalars = tf.stack([losses.total, losses.value, losses.reward, losses.policy, losses.l2,
                                norm])
        return scalars, losses.priorities, losses.value_prediction

    def _tensors(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        return {name: np.asarray(batch[name], self._signature[name].dtype.as_numpy_dtype)
                for name in BATCH_KEYS}

    def train_step(self, batch: Mapping[str, Any]) -> StepResult:
        """One optimizer step on `batch` (a prepared batch dict); returns losses and priorities.

        FloatingPointError if the loss is not finite (the weights are then not trustworthy;
        the last checkpoint is).
        """
        scalars, priorities, value_prediction = self._train_step(self._tensors(batch))
        total, value, reward, policy, l2, norm = (float(x) for x in scalars.numpy())
        result = StepResult(step=int(self.step.numpy()), loss=total, value_loss=value,
                            reward_loss=reward, policy_loss=policy, l2=l2, gradient_norm=norm,
                            priorities=priorities.numpy(), value_prediction=value_prediction.numpy())
        if not np.isfinite(result.loss):
            self.log.error("non_finite_loss", step=result.step, loss=result.loss,
                           value_loss=result.value_loss, reward_loss=result.reward_loss,
                           policy_loss=result.policy_loss, gradient_norm=result.gradient_norm)
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
            raise CheckpointMismatch(
                f"checkpoint {latest} does not fit the {self.settings.network.architecture} network of "
                f"{config.spec.name} with these settings: run with the --game and network "
                f"settings that wrote it, or {start_over} ({_first_line(str(error))})") from error
        step = self.current_step
        self._checkpointed_step = step
        return step

    def save_checkpoint(self) -> str | None:
        """Writes a checkpoint of the current step (nothing if one exists already)."""
        step = self.current_step
        if self._checkpointed_step == step:
            return None
        path = self.manager.save(checkpoint_number=step)
        self._checkpointed_step = step
        self.metrics.checkpoints.inc()
        self.log.info("checkpoint", step=step, path=path)
        return path

    def export(self) -> Path | None:
        """Checkpoints, then exports the current step as a version (atomically) and prunes to
        keep_versions; None (and a warning) if that version exists already."""
        step = self.current_step
        self.save_checkpoint()
        if (self.models_dir / str(step)).exists():
            self.log.warning("version_exists", version=step, path=str(self.models_dir / str(step)),
                             message="kept the existing version; not exported again")
            return None
        started = time.perf_counter()
        path = export_version(self.network, self.models_dir, step)
        pruned = prune_versions(self.models_dir, self.config.keep_versions)
        seconds = time.perf_counter() - started
        self.metrics.exports.inc()
        self.metrics.export_seconds.observe(seconds)
        self.metrics.exported_version.set(step)
        self.latest_version = max(step, self.latest_version or 0)
        self.log.info("exported", version=step, path=str(path), seconds=round(seconds, 3),
                      pruned=pruned)
        return path

    def start(self) -> int:
        """Restores (with resume), removes leftovers of crashed exports, and exports the current
        step if that version does not exist yet; returns the step."""
        restored = self.restore()
        step = self.current_step
        removed = remove_stale_temporaries(self.models_dir)
        versions = list_versions(self.models_dir)
        self.log.info("started", step=step, resumed=restored is not None,
                      checkpoint=self.manager.latest_checkpoint, versions=versions[-5:],
                      removed_temporaries=removed, network=self.network.summary(),
                      batch_size=self.settings.training.batch_size, num_unroll_steps=self.config.num_unroll_steps,
                      learning_rate=self.learning_rate(), optimizer=self.settings.training.optimizer)
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
        `stop` is set (then checkpoint); returns the final step."""
        config, metrics = self.config, self.metrics
        stop = stop or threading.Event()
        iterator = iter(batches)
        step = self.current_step
        window_start, window_step, window_wait = time.perf_counter(), step, 0.0
        model_versions: list[int] = []
        try:
            while not stop.is_set() and (config.steps == 0 or step < config.steps):
                waited = time.perf_counter()
                try:
                    batch = next(iterator)
                except StopIteration:
                    break
                if stop.is_set():  # stopped while waiting: do not start another step
                    break
                waited = time.perf_counter() - waited
                metrics.batch_wait_seconds.observe(waited)
                window_wait += waited
                started = time.perf_counter()
                result = self.train_step(batch)
                metrics.step_seconds.observe(time.perf_counter() - started)
                step = result.step
                if priority_sink is not None and "record_keys" in batch:
                    priority_sink(batch["record_keys"], batch["positions"], result.priorities)
                if "model_version" in batch:
                    model_versions.append(int(np.min(batch["model_version"])))
                metrics.steps.inc()
                metrics.gradient_norm.set(result.gradient_norm)
                for kind, value in (("total", result.loss), ("value", result.value_loss),
                                    ("reward", result.reward_loss), ("policy", result.policy_loss)):
                    metrics.loss.labels(kind).set(value)
                learning_rate = self.learning_rate()
                metrics.learning_rate.set(learning_rate)
                if step % config.log_interval == 0:
                    now = time.perf_counter()
                    steps_per_second = (step - window_step) / max(now - window_start, 1e-9)
                    metrics.steps_per_second.set(steps_per_second)
                    self._report(result, learning_rate, steps_per_second,
                                 window_wait / max(step - window_step, 1), model_versions)
                    window_start, window_step, window_wait, model_versions = now, step, 0.0, []
                if step % self.settings.training.export_interval == 0:
                    self.export()
                elif step % config.checkpoint_interval == 0:
                    self.save_checkpoint()
        finally:
            self.summaries.flush()
        reason = ("steps" if config.steps and step >= config.steps
                  else "stopped" if stop.is_set() else "batches_ended")
        if reason == "steps" and not (self.models_dir / str(step)).exists():
            self.export()  # writes the checkpoint first
        else:
            self.save_checkpoint()
        self.log.info("finished", step=step, reason=reason)
        return step

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
        if model_versions:
            fields["oldest_model_version"] = min(model_versions)
        self.log.info("train", **fields)
        self.summaries.scalars(result.step, {
            "loss/total": result.loss, "loss/value": result.value_loss,
            "loss/reward": result.reward_loss, "loss/policy": result.policy_loss, "loss/l2": result.l2,
            "train/gradient_norm": result.gradient_norm, "train/learning_rate": learning_rate,
            "train/steps_per_second": steps_per_second, "train/batch_wait_seconds": batch_wait_s,
            "train/value_prediction": float(np.mean(result.value_prediction)),
            "train/priority": float(np.mean(result.priorities))})

    def close(self) -> None:
        self.summaries.close()


def _first_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0].strip() if lines else text


def prepare(config: TrainerConfig) -> Callable[[Any], dict[str, np.ndarray]]:
    """`prepare_batch` for this config's game and K, then `augment_batch` when the config has
    symmetries. The returned function is meant for one thread (it holds a random generator)."""
    if config.symmetries is None:
        return lambda batch: prepare_batch(batch, config.spec, config.num_unroll_steps)
    symmetries = config.symmetries
    rng = np.random.default_rng(config.seed)
    return lambda batch: augment_batch(prepare_batch(batch, config.spec, config.num_unroll_steps),
                                       symmetries, rng)
