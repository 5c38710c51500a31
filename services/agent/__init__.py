"""MuFleet's self-play agent: B games at once, ONE network request per search step for all.

`services.agent.search` holds the batched MCTS (MuZero PUCT and Gumbel MuZero, composed from a
tree, selectors, a Q transform and policies) that the agent's self-play loop drives step by
step; `services.agent.gumbel` holds Gumbel MuZero's pure batched functions (Sequential Halving
schedule, improved policy); completed Q-values are `services.agent.search.qtransforms`'.
"""

from services.agent.search import (BatchedSearch, Model, ModelOutput, SearchConfig, SearchResult,
                                   select_actions)

__all__ = ["BatchedSearch", "Model", "ModelOutput", "SearchConfig", "SearchResult", "select_actions"]
