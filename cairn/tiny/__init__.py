"""The small model cairn builds for itself: random weights, real architecture, local tokenizer.

`build_tiny_model` (in `cairn.tiny.build`) writes a Hugging Face model
directory; `cairn models build-tiny` is its command line.
"""
