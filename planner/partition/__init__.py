"""Split layers into pipeline stages over devices: the problem, its objective, and the
strategies that minimise it (baselines, bounds, the exact ILP).

`problem` (every layer priced on every device group) -> `objective` (the pipeline cost
model every strategy is judged by) -> `baselines` and `chain` (contiguous splits) ->
`bounds` (a lower bound, the ILP's cut) -> `ilp` (the exact MILP) -> `search` (run them
all, keep the best) -> `memory_fit` (why a model does not fit, and what would).
"""
