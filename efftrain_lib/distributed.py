"""Chapter 5's exercise API as the library implements it (the same graders grade this file, the
solutions and the learner's exercises/distributed.py):

    broadcast_parameters, all_reduce_gradients, OverlappedDDP, global_token_mean_loss  (data_parallel.py)
    ShardedOptimizer                                                                 (sharding.py)

The implementations, with their reasons, live in those two modules; this file only gathers the API.
"""

from __future__ import annotations

# absolute imports: the graders load this file by path
from efftrain_lib.data_parallel import (  # noqa: F401 - the chapter's API, re-exported
    OverlappedDDP,
    all_reduce_gradients,
    broadcast_parameters,
    global_token_mean_loss,
)
from efftrain_lib.sharding import ShardedOptimizer  # noqa: F401

__all__ = ["OverlappedDDP", "ShardedOptimizer", "all_reduce_gradients", "broadcast_parameters",
           "global_token_mean_loss"]
