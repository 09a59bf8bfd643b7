"""A minimal offline driver over a `ModelRunner`: for tests and the engine benchmark.

It is deliberately naive (the scheduler owns real policy): sequences run in
waves of max_num_seqs, each gets blocks for its prompt plus max_tokens up
front, prompts are prefilled in chunks that fill the token budget, and then
every sequence decodes to its max_tokens, ignoring EOS and stop ids.
"""

from __future__ import annotations

from cairn.common.errors import InvalidArgument, ResourceExhausted
from cairn.services.worker.model_runner import ModelRunner
from cairn.services.worker.sampling_params import SamplingParams
from cairn.services.worker.step import NewSequence, ScheduledSeq, StepInput


class Driver:
    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self._next_seq_id = 0

    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams | list[SamplingParams],
        num_steps: int = 1,
    ) -> list[list[int]]:
        """Generated token ids per prompt; `num_steps` > 1 decodes that many tokens per runner call."""
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise InvalidArgument(f"{len(prompts)} prompts but {len(params)} sampling params")
        wave = self.runner.config.max_num_seqs
        results: list[list[int]] = []
        for start in range(0, len(prompts), wave):
            results += self._generate_wave(
                prompts[start : start + wave], params[start : start + wave], num_steps
            )
        return results

    def _generate_wave(
        self, prompts: list[list[int]], params: list[SamplingParams], num_steps: int
    ) -> list[list[int]]:
        runner = self.runner
        block_size = runner.block_size
        needed = [-(-(len(p) + sp.max_tokens) // block_size) for p, sp in zip(prompts, params, strict=True)]
        if sum(needed) > runner.num_blocks:
            raise ResourceExhausted(
                f"the wave needs {sum(needed)} KV blocks; the cache has {runner.num_blocks}"
            )
        seq_ids = list(range(self._next_seq_id, self._next_seq_id + len(prompts)))
        self._next_seq_id += len(prompts)
        first_block = [sum(needed[:i]) for i in range(len(prompts))]
        blocks = {s: list(range(b, b + n)) for s, b, n in zip(seq_ids, first_block, needed, strict=True)}
        new_seqs = [
            NewSequence(s, list(p), len(p), sp) for s, p, sp in zip(seq_ids, prompts, params, strict=True)
        ]
        outputs = self.prefill(new_seqs, blocks)
        remaining = {s: sp.max_tokens - 1 for s, sp in zip(seq_ids, params, strict=True)}
        lengths = {s: len(p) + 1 for s, p in zip(seq_ids, prompts, strict=True)}
        finished = [s for s in seq_ids if remaining[s] == 0]
        while active := [s for s in seq_ids if remaining[s] > 0]:
            steps = min(num_steps, *(remaining[s] for s in active))
            step = StepInput(
                scheduled=[ScheduledSeq(s, lengths[s] - 1, 1) for s in active],
                finished_seq_ids=finished,
                num_steps=steps,
            )
            for output in runner.step(step).outputs:
                outputs[output.seq_id] += [t.token_id for t in output.tokens]
            for s in active:
                remaining[s] -= steps
                lengths[s] += steps
            finished = [s for s in active if remaining[s] == 0]
        runner.free(seq_ids)
        return [outputs[s] for s in seq_ids]

    def prefill(self, new_seqs: list[NewSequence], blocks: dict[int, list[int]]) -> dict[int, list[int]]:
        """Introduces and prefills `new_seqs` (each with its whole block table) in steps of
        at most max_num_batched_tokens tokens; returns the token each sampled."""
        outputs: dict[int, list[int]] = {seq.seq_id: [] for seq in new_seqs}
        budget = self.runner.config.max_num_batched_tokens
        pending = [(seq, 0) for seq in new_seqs]
        introduced: set[int] = set()
        while pending:
            step, left, carry = StepInput(), budget, []
            for seq, done in pending:
                take = min(len(seq.token_ids) - done, left)
                if take == 0 or len(step.scheduled) == self.runner.config.max_num_seqs:
                    carry.append((seq, done))
                    continue
                if seq.seq_id not in introduced:
                    step.new_seqs.append(seq)
                    introduced.add(seq.seq_id)
                end = done + take
                new_blocks = blocks[seq.seq_id] if done == 0 else []
                step.scheduled.append(
                    ScheduledSeq(seq.seq_id, done, take, new_blocks, sample=end == len(seq.token_ids))
                )
                left -= take
                if end < len(seq.token_ids):
                    carry.append((seq, end))
            for output in self.runner.step(step).outputs:
                outputs[output.seq_id] += [t.token_id for t in output.tokens]
            pending = carry
        return outputs
