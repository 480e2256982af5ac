"""The onnxruntime engine: `pipeplan run BUNDLE --engine onnxruntime --mode infer`.

One process per device of the plan (torchrun, as the torch runner), each holding an
`onnxruntime.InferenceSession` of its stage files with the execution providers its device
calls for (`providers`), streaming requests through the pipeline over `torch.distributed`
(`worker`); `serving` turns what the ranks timed into latency percentiles and throughput
next to the plan's predictions.
"""
