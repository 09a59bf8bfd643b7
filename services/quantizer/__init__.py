"""The quantizer service: post-training quantization jobs producing compressed-tensors artifacts.

Core: `plan` (spec -> validated plan), `calibration` (data), `methods`
(RTN/FP8, GPTQ, AWQ, SmoothQuant, KV ranges), `pipeline` (layer-by-layer
calibration), `export` (compressed-tensors), `evaluate` (perplexity through
the worker, sizes), `quantize` (one run end to end). Shell: `work` (job
entry), `server`, `client`, `cli`. See docs/quantizer.md.
"""
