"""pipeplan's planner: ONNX graph -> layers -> partition -> schedule.

The public API is importable from here (`from planner import inspect_model, plan`);
names are resolved lazily so that `import planner` stays cheap and never imports torch.
"""
