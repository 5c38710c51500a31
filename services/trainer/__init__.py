"""MuFleet's trainer: MuZero training on replay batches (GPU when present), atomic model-version
exports, checkpoints and resume. See docs/trainer.md.

    from services.trainer.config import TrainerConfig
    from services.trainer.trainer import Trainer
    from services.trainer.losses import muzero_loss, scale_gradient

This package file imports nothing heavy, so `python -m services.trainer` can install its signal
handlers before TensorFlow loads.
"""
