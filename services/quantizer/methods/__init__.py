"""Post-training quantization on plain tensors: RTN (INT and FP8), GPTQ, AWQ, SmoothQuant, KV-cache ranges."""
