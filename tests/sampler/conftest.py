from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch

from cairn.services.worker.sampler import Sampler, SamplerOutput, SamplingBatch
from cairn.services.worker.sampling_params import SamplingParams

_CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")],
)


@pytest.fixture(params=["cpu", _CUDA])
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)


Build = Callable[..., SamplingBatch]
Sample = Callable[..., SamplerOutput]


@pytest.fixture
def build(device: torch.device) -> Build:
    """SamplingBatch.build with empty prompts and outputs unless given."""

    def _build(
        params: Sequence[SamplingParams],
        vocab_size: int,
        prompts: Sequence[Sequence[int]] | None = None,
        outputs: Sequence[Sequence[int]] | None = None,
        eos_token_id: int | None = None,
    ) -> SamplingBatch:
        empty = [[] for _ in params]
        return SamplingBatch.build(
            list(params), prompts or empty, outputs or empty, vocab_size, device, eos_token_id=eos_token_id
        )

    return _build


@pytest.fixture
def sample(build: Build, device: torch.device) -> Sample:
    """Builds the batch and runs the sampler on `logits` moved to the device."""

    def _sample(logits: torch.Tensor, params: Sequence[SamplingParams], **kwargs) -> SamplerOutput:
        batch = build(params, logits.shape[-1], **kwargs)
        return Sampler()(logits.to(device), batch)

    return _sample
