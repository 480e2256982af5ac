"""Layouts beyond one pipeline: data-parallel replicas of a pipeline (`replicas`: where
they go; `search`: how many, chosen with the split; `job`: the plan of the whole job)."""
