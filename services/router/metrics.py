"""Serving metrics of the router, on the process's Prometheus registry (/metrics on both ports)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)

HTTP_REQUESTS = Counter(
    "cairn_router_http_requests", "HTTP API requests by route and status code.", ["route", "status"]
)
TIME_TO_FIRST_TOKEN = Histogram(
    "cairn_router_time_to_first_token_seconds",
    "From the request's arrival at the router to its first output text, per prompt.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
INTER_TOKEN_LATENCY = Histogram(
    "cairn_router_inter_token_latency_seconds",
    "Time between consecutive scheduler messages of one generation.",
    ["model"],
    buckets=_TOKEN_BUCKETS,
)
REQUEST_LATENCY = Histogram(
    "cairn_router_request_latency_seconds",
    "From the request's arrival to the generation's end, per prompt.",
    ["model", "finish"],
    buckets=_LATENCY_BUCKETS,
)
PROMPT_TOKENS = Counter("cairn_router_prompt_tokens", "Prompt tokens sent to schedulers.", ["model"])
GENERATED_TOKENS = Counter("cairn_router_generated_tokens", "Output tokens returned to clients.", ["model"])
CACHED_TOKENS = Counter(
    "cairn_router_cached_prompt_tokens",
    "Prompt tokens the schedulers served from their prefix caches.",
    ["model"],
)
RUNNING = Gauge("cairn_router_running_requests", "Requests holding a running slot.")
QUEUED = Gauge("cairn_router_queued_requests", "Requests waiting for a running slot.")
