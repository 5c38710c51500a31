"""Trainer steps per second on synthetic batches, in process (see services/trainer/bench.py)."""

from services.trainer.bench import main

__all__ = ["main"]
