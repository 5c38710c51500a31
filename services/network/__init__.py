"""MuFleet's network server: TensorFlow Serving's gRPC API over the trainer's SavedModels.

    python -m services.network --model_name muzero --model_base_path runs/cartpole/models/muzero

See docs/network.md. `services.network.client.NetworkClient` is the agent's client; it works
against this server and against the real tensorflow_model_server alike.
"""
