"""Generated gRPC stubs for the cairn.v1 contracts (scripts/gen_protos.py)."""
