"""The replay service: durable game records, MuZero training targets, prioritized sampling.

    python -m services.replay --game cartpole --data-dir runs/cartpole/replay --port 50001

Server: `server.ReplayServicer` (gRPC `mufleet.Replay`, protos/replay.proto) over
`buffer.ReplayBuffer` (NumPy ring arrays mirrored from the SQLite store in `storage.py`);
targets: `targets.py`; records: `records.py`; client: `client.ReplayClient`. See docs/replay.md.
This package imports no TensorFlow, so the service starts in well under a second.
"""
