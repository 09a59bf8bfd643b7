"""Training data: read JSONL in the supported layouts, encode with the chat template, pack, batch."""
