"""Training throughput of the trainer alone: steps per second on synthetic batches, in-process.

No replay server: one synthetic batch of the game's default batch size and K is fed again and
again, so the numbers are the train step's own cost (forward over K+1 steps, backward, Adam
update, the host round trip for losses and priorities), plus the time of the first step (tracing)
and of one export. Rows: each game at its default MuZero settings, with and without XLA, with
each `--consistency-weight` (EfficientZero's consistency loss; default: the game's) and each
`--network-sizes` (hidden size x residual blocks; default: the game's).

    python -m services.trainer.bench                      # cartpole and tictactoe
    python -m services.trainer.bench --games cartpole --steps 50 --no-xla
    python -m services.trainer.bench --games cartpole --no-xla --consistency-weight 0 2
    python -m services.trainer.bench --games connect4 --no-xla --steps 10 --network-sizes 64x2 32x2 32x1
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time

import numpy as np

import games


def synthetic_batch(game_name: str, batch_size: int | None = None, seed: int = 0,
                    unroll_observations: bool = False) -> dict[str, np.ndarray]:
    """A valid batch for a registered game at its default settings (with `unroll_observations`
    [B, K+1, *obs] for the consistency loss: index 0 the observation, the rest random)."""
    game = games.make(game_name)
    spec, settings = game.spec, game.settings
    B, K, A = batch_size or settings.training.batch_size, settings.training.num_unroll_steps, spec.num_actions
    rng = np.random.default_rng(seed)
    if spec.observation_dtype == "uint8":
        observation = rng.integers(0, 2, (B, *spec.observation_shape)).astype(np.float32)
    else:
        observation = rng.normal(size=(B, *spec.observation_shape)).astype(np.float32)
    extra = {}
    if unroll_observations:
        later = (rng.integers(0, 2, (B, K, *spec.observation_shape)) if spec.observation_dtype == "uint8"
                 else rng.normal(size=(B, K, *spec.observation_shape))).astype(np.float32)
        extra["unroll_observations"] = np.concatenate([observation[:, None], later], axis=1)
    return dict(**extra, observation=observation, actions=rng.integers(0, A, (B, K)).astype(np.int32),
                target_value=rng.uniform(-1, 1, (B, K + 1)).astype(np.float32),
                target_reward=rng.uniform(0, 1, (B, K + 1)).astype(np.float32),
                target_policy=rng.dirichlet(np.ones(A), (B, K + 1)).astype(np.float32),
                mask=np.ones((B, K + 1), np.float32), policy_mask=np.ones((B, K + 1), np.float32),
                importance_weight=np.ones(B, np.float32),
                record_keys=np.arange(B, dtype=np.int64), positions=np.zeros(B, np.int32))


def measure(game_name: str, steps: int = 100, jit_compile: bool = False,
            batch_size: int | None = None, consistency_weight: float | None = None,
            network_size: tuple[int, int] | None = None,
            ema_decay: float | None = None) -> dict[str, float]:
    """Trains `steps` steps (after 3 warm-up steps) on one synthetic batch; returns timings.
    `consistency_weight`: the consistency loss's factor (None: the game's); `network_size`:
    (hidden_size, res_blocks) instead of the game's; `ema_decay`: the decay of the weights'
    moving average updated after every step (None: the game's, 0 = none)."""
    from services.common.logs import get_logger
    from services.trainer.config import TrainerConfig
    from services.trainer.trainer import Trainer

    game = games.make(game_name)
    settings = game.settings.replace(batch_size=batch_size) if batch_size else game.settings
    if consistency_weight is not None:
        settings = settings.replace(consistency_weight=consistency_weight)
    if network_size is not None:
        settings = settings.replace(hidden_size=network_size[0], res_blocks=network_size[1])
    if ema_decay is not None:
        settings = settings.replace(ema_decay=ema_decay)
    with tempfile.TemporaryDirectory() as directory:
        config = TrainerConfig(spec=game.spec, settings=settings, models_dir=f"{directory}/models",
                               checkpoint_dir=f"{directory}/checkpoints", jit_compile=jit_compile, seed=0)
        trainer = Trainer(config, log=get_logger("trainer", io.StringIO()))
        batch = synthetic_batch(game_name, settings.training.batch_size,
                                unroll_observations=config.unroll_observations)
        started = time.perf_counter()
        trainer.train_step(batch)
        first = time.perf_counter() - started
        for _ in range(2):
            trainer.train_step(batch)
        started = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(batch)
        seconds = time.perf_counter() - started
        started = time.perf_counter()
        trainer.export()
        export = time.perf_counter() - started
    return {"steps_per_second": steps / seconds, "ms_per_step": 1000 * seconds / steps,
            "positions_per_second": steps * settings.training.batch_size / seconds, "first_step_s": first,
            "export_s": export, "batch_size": settings.training.batch_size, "device": trainer.device,
            "consistency_weight": config.consistency_weight, "ema_decay": settings.training.ema_decay,
            "network_size": f"{settings.network.hidden_size}x{settings.network.res_blocks}"}


def parse_network_size(text: str) -> tuple[int, int]:
    """"HIDDENxBLOCKS" ("32x1") -> (32, 1)."""
    hidden, sep, blocks = text.partition("x")
    if not sep or not hidden.isdigit() or not blocks.isdigit():
        raise argparse.ArgumentTypeError(f"a network size is HIDDENxBLOCKS, e.g. 32x1; got {text!r}")
    return int(hidden), int(blocks)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.trainer.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--games", nargs="*", default=["cartpole", "tictactoe"], choices=games.names())
    parser.add_argument("--steps", type=int, default=100, help="timed steps per row (default: %(default)s)")
    parser.add_argument("--no-xla", action="store_true", help="skip the XLA rows (each compiles ~20 s on CPU)")
    parser.add_argument("--consistency-weight", type=float, nargs="+", default=[None], metavar="W",
                        help="rows with each consistency loss weight (default: the game's, 0 = off)")
    parser.add_argument("--network-sizes", type=parse_network_size, nargs="+", default=[None], metavar="HxB",
                        help="rows with each network size: hidden size (channels of a resnet) x residual "
                             "blocks, e.g. 64x2 32x2 32x1 (default: the game's)")
    parser.add_argument("--ema-decay", type=float, nargs="+", default=[None], metavar="D",
                        help="rows with each decay of the weights' moving average, e.g. 0 0.998 "
                             "(default: the game's, 0 = none)")
    args = parser.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"trainer: train steps on synthetic batches ({args.steps} timed steps per row)")
    for column in ("game", "network", "device", "XLA", "consistency", "EMA", "batch", "steps/s", "ms/step",
                   "positions/s",
                   "first step (trace) s", "export s"):
        table.add_column(column, justify="right")
    rows = [(name, jit, weight, size, decay) for name in args.games
            for jit in ([False] if args.no_xla else [False, True])
            for weight in args.consistency_weight for size in args.network_sizes for decay in args.ema_decay]
    for name, jit, weight, size, decay in rows:
        r = measure(name, args.steps, jit_compile=jit, consistency_weight=weight, network_size=size,
                    ema_decay=decay)
        table.add_row(name, r["network_size"], r["device"], "yes" if jit else "no", f"{r['consistency_weight']:g}",
                      f"{r['ema_decay']:g}",
                      str(r["batch_size"]), f"{r['steps_per_second']:.1f}", f"{r['ms_per_step']:.1f}",
                      f"{r['positions_per_second']:.0f}", f"{r['first_step_s']:.1f}",
                      f"{r['export_s']:.2f}")
    Console(width=130).print(table)


if __name__ == "__main__":
    main()
