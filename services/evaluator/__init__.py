"""The evaluator service: plays the newest model version against a ladder of opponents (random,
minimax, rollout MCTS, alpha-beta, earlier versions) and rates everyone on one Elo scale.

`python -m services.evaluator --game ... --network HOST:PORT --environment HOST:PORT
--state-dir DIR`; the library: `services.evaluator.service.serve(EvaluatorConfig(...))`.
Docs: docs/evaluator.md.
"""
