"""The reanalyse service: re-runs the agent's batched search on stored positions with the newest
model and sends the new root values and search policies back to the replay (MuZero Reanalyse).

`python -m services.reanalyse --game ... --replay HOST:PORT --network HOST:PORT`; the library:
`services.reanalyse.service.serve(ReanalyseConfig(...))`. Docs: docs/reanalyse.md.
"""
