"""Cost model: per-operator FLOPs and bytes, device rooflines, links and memory.

Pure functions and pydantic data, no torch. See `cost.ops` (what an operator costs),
`cost.devices` (what a device can do), `cost.links` (what a link can move),
`cost.roofline` (time of an operator on a device) and `cost.memory` (bytes a stage holds).
"""
