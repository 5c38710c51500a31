"""MuZero networks in TensorFlow, their atomic SavedModel export, and TensorFlow Serving's
config files (`models.config`, `batching.config`, `monitoring.config`).

    from models.networks import MuZeroNetwork
    from models.export import export_version, load_version, prune_versions
    from models import support
"""
