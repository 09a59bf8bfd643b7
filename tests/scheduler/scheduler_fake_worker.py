"""A test double of the worker: runs StepInputs against a simulated paged KV cache.

Each cache slot holds what a real model's KV at that position depends on: a
digest of the whole token prefix up to it. A step writes the slots of the
positions it computes, then "attends" by reading back every position of the
sequence through its block table and checking each digest. So a wrong block
table, a missing copy-on-write copy, a stale prefix hit or a block freed while
still in use changes what is read and fails loudly, instead of going unnoticed.

The next token is a hash of the last digest (and the sampling seed), so output
depends only on a sequence's tokens: never on batching, preemption or which
blocks it got. `next_token` can be replaced to script EOS and stop tokens.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from cairn.services.worker.sampling_params import SamplingParams
from cairn.services.worker.step import SampledToken, SeqOutput, StepInput, StepOutput

VOCAB = 1000

# (tokens so far, how many are prompt, digest of the last position, sampling) -> next token.
NextToken = Callable[[list[int], int, int, SamplingParams], int]


def digest(previous: int, token_id: int) -> int:
    data = previous.to_bytes(8, "little") + token_id.to_bytes(4, "little")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def hashed_next_token(tokens: list[int], num_prompt: int, last_digest: int, sampling: SamplingParams) -> int:
    return digest(last_digest, sampling.seed or 0) % VOCAB


def token_logprob(token_id: int) -> float:
    return -(token_id % 97) / 10.0


@dataclass
class _Seq:
    tokens: list[int]
    num_prompt: int
    sampling: SamplingParams
    table: list[int] = field(default_factory=list)
    digests: list[int] = field(default_factory=list)
    num_computed: int = 0

    def digest_at(self, position: int) -> int:
        while len(self.digests) <= position:
            previous = self.digests[-1] if self.digests else 0
            self.digests.append(digest(previous, self.tokens[len(self.digests)]))
        return self.digests[position]


class FakeWorker:
    def __init__(self, num_blocks: int, block_size: int, next_token: NextToken = hashed_next_token) -> None:
        self.block_size = block_size
        self.cache: list[list[int | None]] = [[None] * block_size for _ in range(num_blocks)]
        self.seqs: dict[int, _Seq] = {}
        self.next_token = next_token
        self.num_steps_run = 0

    def step(self, step: StepInput) -> StepOutput:
        self.num_steps_run += 1
        bs = self.block_size
        for seq_id in step.finished_seq_ids:
            assert self.seqs.pop(seq_id, None) is not None, f"finished sequence {seq_id} was never introduced"
        for new in step.new_seqs:
            assert new.seq_id not in self.seqs, f"sequence {new.seq_id} introduced twice"
            seq = _Seq(list(new.token_ids), new.num_prompt_tokens, new.sampling)
            if new.parent_seq_id is not None:
                # The worker's fork rule: the parent's full blocks for the child's token count.
                parent = self.seqs[new.parent_seq_id]
                assert new.token_ids == parent.tokens[: len(new.token_ids)], (
                    "a fork must repeat its parent's tokens"
                )
                seq.table = parent.table[: min(len(new.token_ids) // bs, len(parent.table))]
            self.seqs[new.seq_id] = seq
        for src, dst in step.block_copies:
            self.cache[dst] = list(self.cache[src])
        scheduled = [(entry, self.seqs[entry.seq_id]) for entry in step.scheduled]
        assert len({entry.seq_id for entry in step.scheduled}) == len(scheduled), "a sequence scheduled twice"
        for entry, seq in scheduled:
            seq.table.extend(entry.new_block_ids)
            end = entry.num_computed_tokens + entry.num_scheduled_tokens
            assert entry.num_scheduled_tokens > 0
            assert end <= len(seq.tokens), f"sequence {entry.seq_id} computes past its tokens"
            assert entry.sample == (end == len(seq.tokens)), f"sequence {entry.seq_id}: sample flag is wrong"
            if seq.num_computed:
                assert entry.num_computed_tokens == seq.num_computed, f"sequence {entry.seq_id} skips tokens"
            slots_needed = end + step.num_steps - 1
            assert len(seq.table) * bs >= slots_needed, f"sequence {entry.seq_id} lacks slots"
            if step.num_steps > 1:
                assert entry.num_scheduled_tokens == 1 and entry.sample, "multi-step with a non-decode"
        self._check_no_shared_writes(scheduled, step.num_steps)
        outputs = {entry.seq_id: SeqOutput(entry.seq_id) for entry, _ in scheduled}
        for entry, seq in scheduled:
            start, end = entry.num_computed_tokens, entry.num_computed_tokens + entry.num_scheduled_tokens
            self._compute(seq, start, end)
            if seq.sampling.prompt_logprobs is not None:
                scored = max(0, min(end, seq.num_prompt - 1) - start)
                outputs[entry.seq_id].prompt_logprobs.extend(
                    SampledToken(seq.tokens[p + 1], token_logprob(seq.tokens[p + 1]))
                    for p in range(start, start + scored)
                )
            if entry.sample:
                outputs[entry.seq_id].tokens.append(self._sample(seq))
        for _ in range(step.num_steps - 1):
            for entry, seq in scheduled:
                self._compute(seq, seq.num_computed, seq.num_computed + 1)
                outputs[entry.seq_id].tokens.append(self._sample(seq))
        return StepOutput([out for out in outputs.values() if out.tokens or out.prompt_logprobs])

    def _compute(self, seq: _Seq, start: int, end: int) -> None:
        bs = self.block_size
        for position in range(start, end):
            self.cache[seq.table[position // bs]][position % bs] = seq.digest_at(position)
        # Attention: every position up to `end` must read back its own prefix.
        for position in range(end):
            found = self.cache[seq.table[position // bs]][position % bs]
            assert found == seq.digest_at(position), f"position {position} reads KV of another prefix"
        seq.num_computed = end

    def _sample(self, seq: _Seq) -> SampledToken:
        token_id = self.next_token(
            seq.tokens, seq.num_prompt, seq.digest_at(len(seq.tokens) - 1), seq.sampling
        )
        seq.tokens.append(token_id)
        return SampledToken(token_id, token_logprob(token_id))

    def _check_no_shared_writes(self, scheduled: list, num_steps: int) -> None:
        """A block written in this step is held by no other live sequence."""
        holders = Counter(block for seq in self.seqs.values() for block in seq.table)
        bs = self.block_size
        for entry, seq in scheduled:
            first = entry.num_computed_tokens // bs
            last = (entry.num_computed_tokens + entry.num_scheduled_tokens + num_steps - 2) // bs
            for block in seq.table[first : last + 1]:
                assert holders[block] == 1, f"sequence {entry.seq_id} writes block {block} that others hold"
