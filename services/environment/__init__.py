"""The environment service: hosts sessions of B vectorized games that are stepped together.

    python -m services.environment --game cartpole --port 50000

Server: `server.EnvironmentServicer` (gRPC `mufleet.Environment`, protos/environment.proto),
sessions: `sessions.SessionStore`, client: `client.EnvironmentClient`. See docs/environment.md.
This package imports no TensorFlow, so a server is ready about half a second after it starts.
"""
