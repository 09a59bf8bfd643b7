"""Router settings (flags --tokenizer-address, env CAIRN_ROUTER_TOKENIZER_ADDRESS, YAML, ...).

    deployments: {tiny-llama: ["127.0.0.1:50053"], llama-8b: ["sched-0:50053", "sched-1:50053"]}

maps each served model name to the scheduler replicas of its deployment.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, field_validator

from cairn.common.config import GrpcPort, MetricsPort, ServiceConfig
from cairn.services.tokenizer.client import DEFAULT_TARGET as TOKENIZER_TARGET


class RouterConfig(ServiceConfig):
    service_name: ClassVar[str] = "router"

    port: GrpcPort = 50051
    metrics_port: MetricsPort = 9091
    http_port: int = Field(
        8000,
        ge=-1,
        le=65535,
        description="OpenAI-compatible HTTP port; 0 binds an ephemeral port, -1 disables",
    )
    tokenizer_address: str = Field(TOKENIZER_TARGET, description="tokenizer service (host:port or gRPC name)")
    deployments: dict[str, list[str]] = Field(
        default_factory=dict,
        description="model name -> scheduler replica addresses, e.g. {tiny-llama: [127.0.0.1:50053]}",
    )
    tokenizers: dict[str, str] = Field(
        default_factory=dict,
        description="model name -> tokenizer reference (registry ref or directory) where it differs from the "
        "model the scheduler reports, e.g. when the tokenizer service cannot read the workers' directories",
    )
    api_keys_file: Path | None = Field(
        None,
        description="file of accepted API keys, one per line: KEY [name=NAME] [rpm=N]; "
        "unset, with api_keys empty: no authentication",
    )
    api_keys: list[str] = Field(
        default_factory=list, description="accepted API keys in addition to api_keys_file"
    )
    rate_limit_rpm: float = Field(
        0.0, ge=0, description="requests per minute allowed to each API key (0: unlimited)"
    )
    rate_limit_burst: int = Field(
        0, ge=0, description="requests a key may send at once before the rate applies (0: one minute's worth)"
    )
    max_running: int = Field(1024, gt=0, description="requests the router forwards to schedulers at once")
    max_queue: int = Field(
        1024, ge=0, description="requests waiting for a running slot; beyond that: 429 / RESOURCE_EXHAUSTED"
    )
    retry_after_s: float = Field(1.0, gt=0, description="Retry-After suggested when the queue is full")
    request_timeout_s: float = Field(
        600.0, gt=0, description="deadline of a request whose caller set none (and the longest accepted)"
    )
    affinity_max_imbalance: int = Field(
        8,
        ge=0,
        description="requests a replica holding a prompt's prefix may have above the least loaded one "
        "and still get the prompt",
    )
    affinity_capacity: int = Field(
        200_000, gt=0, description="prefix blocks remembered for affinity, over all deployments"
    )
    refresh_interval_s: float = Field(
        5.0, gt=0, description="seconds between checks of each scheduler replica (info and reachability)"
    )
    system_fingerprint: str = Field(
        "", description="OpenAI system_fingerprint; empty: derived from the cairn version and the model"
    )

    @field_validator("deployments")
    @classmethod
    def _replicas_given(cls, deployments: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, addresses in deployments.items():
            if not name:
                raise ValueError("deployment names must not be empty")
            if not addresses or not all(addresses):
                raise ValueError(f"deployment {name!r} needs at least one scheduler address")
        return deployments
