"""The cost model, the lowest layer: it imports nothing of pipeplan's other packages.

Pure functions and pydantic data, no torch. What an operator is (`tensor`, `opcost`: the
contract with the graph loader, and the one table of non-data inputs), what it costs
(`ops/`, one module per operator family; `signature`, the key of measured times), what a
device can do (`devices`), what a link moves (`links`), how they form a cluster
(`cluster`), the time of an operator on a device (`roofline`), of an optimizer step
(`optimizer`), the bytes a stage holds (`memory`), and what a calibration measured
(`profile`). `errors`, `fields` and `files` serve every layer above.
"""
