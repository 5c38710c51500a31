"""The evaluator: rates agents and opponents against each other on an Elo ladder."""
