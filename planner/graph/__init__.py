"""ONNX -> a priced `networkx` graph -> layers: what the partitioner places.

`onnx_io` (read safely) -> `shapes` (bind and infer) -> `params` (weights) -> `fold`
(static shape arithmetic) -> `load` (the graph, `load_graph`) -> `price` (the cost model
per operator) -> `layers` (operators grouped into convex layers) -> `inspect` (the
summary `pipeplan inspect` prints).
"""
