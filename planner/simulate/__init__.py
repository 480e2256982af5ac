"""Time a split: schedule it, play the schedule in a discrete-event simulator, draw it.

`costs` (what the simulator needs, from a split or a saved plan) -> `engine` (the event
simulation) -> `choose` (schedule each kind on a split, keep the fastest that fits) ->
`replay` (re-simulate a saved plan) -> `timeline` (Chrome trace and PNG).
"""
