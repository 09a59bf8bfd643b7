"""Prometheus metrics of a scheduler deployment, on the default registry that
`cairn.common` serves at /metrics. Every series carries the deployment name,
so one process may host several deployments (tests, `cairn up`).

Throughput is `rate(cairn_scheduler_generated_tokens_total[1m])`; the
`..._tokens_per_second` gauge holds the same figure over the last refresh
interval for dashboards without PromQL.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
_TOKEN_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    1,
    2.5,
)

_D = ["deployment"]
WAITING = Gauge("cairn_scheduler_waiting", "Sequences waiting for a seat (queue depth).", _D)
RUNNING = Gauge("cairn_scheduler_running", "Sequences running on workers.", _D)
KV_USAGE = Gauge("cairn_scheduler_kv_usage", "Fraction of KV blocks held by sequences, over workers.", _D)
PREFIX_HIT_RATE = Gauge(
    "cairn_scheduler_prefix_cache_hit_rate", "Prompt tokens served from the prefix cache / prompt tokens.", _D
)
TOKENS_PER_SECOND = Gauge(
    "cairn_scheduler_generated_tokens_per_second", "Output tokens/s over the last refresh interval.", _D
)
WORKERS = Gauge("cairn_scheduler_workers", "Worker replicas by health.", [*_D, "health"])
PREEMPTIONS = Counter("cairn_scheduler_preemptions", "Sequences preempted by recompute.", _D)
GENERATED_TOKENS = Counter("cairn_scheduler_generated_tokens", "Output tokens generated.", _D)
PROMPT_TOKENS = Counter("cairn_scheduler_prompt_tokens", "Prompt tokens of admitted requests.", _D)
STEPS = Counter("cairn_scheduler_steps", "Worker steps run.", _D)
FINISHED = Counter("cairn_scheduler_requests_finished", "Requests finished, by reason.", [*_D, "reason"])
MOVED = Counter("cairn_scheduler_requests_moved", "Request pieces moved to another replica.", _D)
WORKER_FAILURES = Counter("cairn_scheduler_worker_failures", "Worker replicas lost.", _D)
ADAPTER_LOADS = Counter("cairn_scheduler_adapter_loads", "LoRA adapters loaded onto workers.", _D)
ADAPTER_EVICTIONS = Counter(
    "cairn_scheduler_adapter_evictions", "LoRA adapters unloaded to make room for another.", _D
)
TTFT = Histogram(
    "cairn_scheduler_time_to_first_token_seconds",
    "Arrival to first output token.",
    _D,
    buckets=_LATENCY_BUCKETS,
)
TPOT = Histogram(
    "cairn_scheduler_time_per_output_token_seconds",
    "Mean time per output token after the first, per request.",
    _D,
    buckets=_TOKEN_LATENCY_BUCKETS,
)
E2E = Histogram(
    "cairn_scheduler_e2e_request_latency_seconds", "Arrival to the last token.", _D, buckets=_LATENCY_BUCKETS
)


class EngineMetrics:
    """What one replica's loop reports per step; children bound once, so a step
    costs a few counter increments."""

    def __init__(self, deployment: str) -> None:
        self._preemptions = PREEMPTIONS.labels(deployment)
        self._generated = GENERATED_TOKENS.labels(deployment)
        self._steps = STEPS.labels(deployment)
        self._adapter_loads = ADAPTER_LOADS.labels(deployment)
        self._adapter_evictions = ADAPTER_EVICTIONS.labels(deployment)

    def preempted(self, count: int) -> None:
        self._preemptions.inc(count)

    def adapter_loaded(self) -> None:
        self._adapter_loads.inc()

    def adapter_evicted(self) -> None:
        self._adapter_evictions.inc()

    def stepped(self, generated: int) -> None:
        self._steps.inc()
        if generated:
            self._generated.inc(generated)


class DeploymentMetrics:
    """Request latencies and the deployment's gauges."""

    def __init__(self, deployment: str) -> None:
        self.deployment = deployment
        self.engine = EngineMetrics(deployment)
        self._ttft = TTFT.labels(deployment)
        self._tpot = TPOT.labels(deployment)
        self._e2e = E2E.labels(deployment)
        self._prompt = PROMPT_TOKENS.labels(deployment)
        self._moved = MOVED.labels(deployment)
        self._failures = WORKER_FAILURES.labels(deployment)
        self._last_tokens = 0
        self._last_time = time.monotonic()

    def admitted(self, prompt_tokens: int) -> None:
        self._prompt.inc(prompt_tokens)

    def first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def finished(self, reason: str, seconds: float, decode_seconds: float, num_tokens: int) -> None:
        FINISHED.labels(self.deployment, reason).inc()
        self._e2e.observe(seconds)
        if num_tokens > 1:
            self._tpot.observe(decode_seconds / (num_tokens - 1))

    def moved(self, count: int = 1) -> None:
        self._moved.inc(count)

    def worker_failed(self) -> None:
        self._failures.inc()

    def refresh(
        self,
        waiting: int,
        running: int,
        kv_usage: float,
        hit_rate: float,
        generated_tokens: int,
        workers_by_health: dict[str, int],
    ) -> None:
        d = self.deployment
        WAITING.labels(d).set(waiting)
        RUNNING.labels(d).set(running)
        KV_USAGE.labels(d).set(kv_usage)
        PREFIX_HIT_RATE.labels(d).set(hit_rate)
        now = time.monotonic()
        if now > self._last_time:
            TOKENS_PER_SECOND.labels(d).set((generated_tokens - self._last_tokens) / (now - self._last_time))
        self._last_tokens, self._last_time = generated_tokens, now
        for health, count in workers_by_health.items():
            WORKERS.labels(d, health).set(count)
