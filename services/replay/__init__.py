"""The replay service: durable game records, MuZero training targets, prioritized sampling.

    python -m services.replay --game cartpole --data-dir runs/cartpole/replay --port 50001

Server: `server.ReplayServicer` (gRPC `mufleet.Replay`, protos/replay.proto) over
`buffer.ReplayBuffer`, a table composed of parts: NumPy ring arrays (`ring.py`: slots, keys,
evictions) mirrored from the SQLite store (`storage.py`), a selector (`selectors.py`: uniform, or
prioritized on a sum-tree), a rate limiter (`rate_limiter.py`) and the targets (`targets.py`);
records: `records.py`; client: `client.ReplayClient`. See docs/replay.md.
This package imports no TensorFlow, so the service starts in well under a second.
"""
