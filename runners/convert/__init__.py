"""ONNX -> ``torch.fx`` converter (see :mod:`runners.onnx_to_torch` for the public entry)."""
