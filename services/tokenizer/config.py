"""Tokenizer service settings (flags --registry-address, env CAIRN_TOKENIZER_REGISTRY_ADDRESS, YAML, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from cairn.common.config import GrpcPort, MetricsPort, ServiceConfig, cairn_home
from cairn.services.registry.client import DEFAULT_TARGET as REGISTRY_TARGET


def default_cache_dir() -> Path:
    """$CAIRN_HOME/cache/tokenizers, else ~/.cairn/cache/tokenizers."""
    return cairn_home("cache", "tokenizers")


class TokenizerConfig(ServiceConfig):
    service_name: ClassVar[str] = "tokenizer"

    port: GrpcPort = 50052
    metrics_port: MetricsPort = 9092
    registry_address: str = Field(
        REGISTRY_TARGET, description="registry to load models from; empty: local model directories only"
    )
    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description="where tokenizer files pulled from the registry are kept ($CAIRN_HOME/cache/tokenizers)",
    )
    max_cached_tokenizers: int = Field(
        16, gt=0, description="tokenizers kept loaded; the least used go first"
    )
    resolve_ttl_s: float = Field(
        10.0,
        ge=0,
        description="seconds a moving reference (name, name@alias) keeps its resolved version before the "
        "registry is asked again",
    )
    allow_local_dirs: bool = Field(
        True, description="accept model directories on this machine as references (turn off in a cluster)"
    )
    allow_request_chat_template: bool = Field(
        True, description="accept a chat template in requests (Jinja runs sandboxed, but costs CPU)"
    )
    preload: list[str] = Field(
        default_factory=list, description="models to load before reporting SERVING, e.g. [llama@production]"
    )
    threads: int = Field(8, gt=0, description="threads for tokenization work (the gRPC loop stays free)")
