"""The runtime every cairn service starts through.

config (schema + flags/env/YAML), server (grpc.aio bootstrap, health,
reflection, drain), channel (clients), errors (typed status errors), logging,
metrics, request_id. Service logic never lives here.
"""
