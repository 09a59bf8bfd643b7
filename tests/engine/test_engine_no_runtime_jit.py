"""After start-up (profiling step, graph capture) and one warm-up request, serving compiles no
Triton kernel: batches of every size and mix reuse the variants compiled at start-up. On an H200,
kernels that specialized on each batch's metadata compiled 11 variants (10.7 s) inside a timed
reference-workload run."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from cairn.services.scheduler.offline import LLM
from cairn.services.worker.sampling_params import SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_serving_compiles_no_kernel_after_start_up(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from triton.runtime.jit import JITFunction

    llm = LLM(
        str(tiny_model_dir),
        device="cuda",
        dtype="bfloat16",
        max_num_seqs=64,
        max_num_batched_tokens=512,
        max_model_len=1024,
        num_scheduler_steps=4,
    )
    try:
        llm.generate([[5, 6, 7]], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))
        compiled: list[str] = []
        compile_variant = JITFunction._do_compile

        def recording(self: JITFunction, *args: Any) -> Any:
            compiled.append(self.fn.__name__)
            return compile_variant(self, *args)

        monkeypatch.setattr(JITFunction, "_do_compile", recording)
        draw = random.Random(0)
        for count in (1, 3, 17, 64):
            prompts = [[draw.randrange(3, 2000) for _ in range(draw.randrange(1, 300))] for _ in range(count)]
            params = [
                SamplingParams(temperature=0.0, max_tokens=draw.randrange(1, 24), ignore_eos=True)
                for _ in prompts
            ]
            results = llm.generate(prompts, params)
            assert [len(r.outputs[0].token_ids) for r in results] == [p.max_tokens for p in params]
        assert compiled == []
    finally:
        llm.close()
