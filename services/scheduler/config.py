"""Scheduling limits and switches for one model deployment.

A pydantic model so the scheduler service can nest it in its ServiceConfig and
have every field reachable from flags, env and YAML (see cairn.common.config).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SchedulerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    block_size: int = Field(16, gt=0, description="tokens per KV block; must match the workers'")
    num_blocks: int | None = Field(
        None, gt=0, description="KV blocks per worker replica; unset: what the worker's memory profile allows"
    )
    max_num_seqs: int = Field(256, gt=0, description="most sequences in one step (and running at once)")
    max_num_batched_tokens: int = Field(8192, gt=0, description="most tokens computed in one step")
    max_model_len: int = Field(4096, gt=0, description="longest prompt + output accepted")
    enable_chunked_prefill: bool = Field(True, description="split long prompts across steps, decodes first")
    enable_prefix_caching: bool = Field(True, description="reuse KV blocks of identical prompt prefixes")
    num_scheduler_steps: int = Field(
        1, gt=0, le=64, description="decode steps per worker call when the batch is all decodes"
    )

    @model_validator(mode="after")
    def _prompt_fits_one_step(self) -> SchedulerConfig:
        # Without chunking a prompt (or a preempted sequence's recompute) must
        # be computed in one step, so the token budget has to cover the longest one.
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_model_len "
                f"({self.max_model_len}) when chunked prefill is off"
            )
        return self
