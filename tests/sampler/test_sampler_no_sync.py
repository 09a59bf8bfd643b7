"""Building a batch and sampling queue work on the GPU without waiting for it."""

from __future__ import annotations

import pytest
import torch

from cairn.services.worker.sampler import Sampler, SamplingBatch, prompt_logprobs
from cairn.services.worker.sampling_params import SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

VOCAB = 1000
PARAMS = [
    SamplingParams(temperature=0.0),
    SamplingParams(temperature=0.7, top_p=0.9, seed=3, logprobs=4),
    SamplingParams(top_k=20, repetition_penalty=1.2, presence_penalty=0.5, frequency_penalty=0.2),
    SamplingParams(min_p=0.1, logit_bias={5: 3.0}, min_tokens=8, stop_token_ids=(7,)),
    SamplingParams(temperature=1.2, top_k=5, top_p=0.5),
]


def test_a_step_never_synchronizes_with_the_device() -> None:
    logits = torch.randn(len(PARAMS), VOCAB, device="cuda")
    prompts = [[1, 2, 3]] * len(PARAMS)
    outputs = [[4, 4, 9]] * len(PARAMS)
    next_ids = torch.tensor([1, 2, 3], device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batch = SamplingBatch.build(PARAMS, prompts, outputs, VOCAB, "cuda", eos_token_id=0)
        out = Sampler()(logits, batch)
        prompt_logprobs(logits[:3], next_ids, 2)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.token_ids.shape == (len(PARAMS),) and out.top_ids.shape == (len(PARAMS), 4)
