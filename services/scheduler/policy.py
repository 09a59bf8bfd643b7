"""The continuous-batching policy for one worker replica's block pool.

Each `schedule()` builds one StepInput in this order:
  1. samples waiting to fork from a request's finished prompt prefill (n > 1),
  2. running sequences with one token to compute (decodes),
  3. running sequences in the middle of a chunked prefill,
  4. waiting sequences, best first, while blocks, `max_num_seqs` and the token
     budget allow (not in a step that had to preempt). The first one that
     does not fit stops admission (FCFS), and admission never preempts: a
     better-ranked arrival waits for running sequences to finish or yield.
When a running sequence needs a block and none is left, the running sequence
that ranks last (highest priority value, latest arrival) is preempted by
recompute: its blocks are freed, its tokens kept, and it waits to be
re-introduced with all of them (prefix caching usually makes that cheap).
When the whole batch is decodes and nothing waits, it asks for
`num_scheduler_steps` decode steps at once, with lookahead slots allocated.

`update()` takes the worker's StepOutput for that step, appends the sampled
tokens, detects finishes, frees blocks and returns the per-request deltas.
Steps alternate strictly: schedule, run, update. The per-step work is
O(scheduled sequences) plus O(new blocks); no Python loop runs over tokens
except appending the sampled ones.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from cairn.common.errors import AlreadyExists, CairnError, FailedPrecondition, InvalidArgument
from cairn.services.scheduler.block_manager import BlockManager, SlotUpdate
from cairn.services.scheduler.config import SchedulerConfig
from cairn.services.scheduler.output import RequestOutput, request_delta
from cairn.services.scheduler.sequence import FinishReason, Request, Sequence, SequenceStatus
from cairn.services.scheduler.waiting_queue import WaitingQueue
from cairn.services.worker.step import NewSequence, ScheduledSeq, StepInput, StepOutput

_RUNNING = SequenceStatus.RUNNING
_FINISHED = SequenceStatus.FINISHED


@dataclass
class SchedulerStep:
    """A step for the worker plus what update() needs to read its output."""

    input: StepInput
    # The Sequence behind each input.scheduled entry, in the same order.
    seqs: list[Sequence] = field(default_factory=list)
    num_batched_tokens: int = 0
    num_preempted: int = 0

    @property
    def is_empty(self) -> bool:
        """Nothing to send: no sequence to compute and none for the worker to drop."""
        return not self.input.scheduled and not self.input.finished_seq_ids


@dataclass
class SchedulerStats:
    """Live figures, as cairn.v1.SchedulerStats reports them."""

    waiting: int
    running: int
    preemptions: int
    kv_usage: float
    prefix_cache_hit_rate: float
    finished_requests: int
    generated_tokens: int
    free_blocks: int
    cached_free_blocks: int


class _StepBuilder:
    """One schedule() call's growing step. Entries are keyed by sequence so a
    sequence preempted later in the same call can be taken out again."""

    def __init__(self, token_budget: int) -> None:
        self.token_budget = token_budget
        self.scheduled: dict[int, tuple[ScheduledSeq, Sequence]] = {}
        self.new_seqs: dict[int, NewSequence] = {}
        self.copies: dict[int, list[tuple[int, int]]] = {}
        self.finished_seq_ids: list[int] = []
        self.num_preempted = 0
        self.has_prefill = False
        # Lookahead slots were allocated for every decode so far.
        self.lookahead_ok = True

    def add(self, seq: Sequence, entry: ScheduledSeq, copies: list[tuple[int, int]]) -> None:
        self.scheduled[seq.seq_id] = (entry, seq)
        self.token_budget -= entry.num_scheduled_tokens
        if copies:
            self.copies[seq.seq_id] = copies

    def remove(self, seq: Sequence) -> None:
        entry, _ = self.scheduled.pop(seq.seq_id)
        self.token_budget += entry.num_scheduled_tokens
        self.copies.pop(seq.seq_id, None)
        self.new_seqs.pop(seq.seq_id, None)


class Scheduler:
    def __init__(
        self, config: SchedulerConfig, block_manager: BlockManager, eos_token_ids: Iterable[int] = ()
    ) -> None:
        if block_manager.block_size != config.block_size:
            raise InvalidArgument(
                f"block manager block_size {block_manager.block_size} != "
                f"config block_size {config.block_size}"
            )
        self.config = config
        self.block_manager = block_manager
        self.eos_token_ids = frozenset(eos_token_ids)
        self.requests: dict[str, Request] = {}
        self.waiting = WaitingQueue()
        # Sorted by Sequence.sort_key, best first, so the preemption victim is
        # always the last entry and never one the current pass already scheduled.
        self.running: list[Sequence] = []
        self._pending_forks: list[Sequence] = []
        # Sequences the worker must drop, sent with the next step.
        self._finished_seq_ids: list[int] = []
        self._seq_ids = itertools.count()
        self._arrivals = itertools.count()
        self._in_flight: SchedulerStep | None = None
        self.num_preemptions = 0
        self.num_finished_requests = 0
        self.num_generated_tokens = 0

    # ------------------------------------------------------------ requests

    def add_request(self, request: Request) -> None:
        self.validate(request)
        request.arrival_seq = next(self._arrivals)
        params = request.sampling
        request.eos_token_ids = frozenset() if params.ignore_eos else self.eos_token_ids
        request.stop_token_ids = frozenset(params.stop_token_ids)
        request.stop_ids = request.eos_token_ids | request.stop_token_ids
        seq = Sequence(next(self._seq_ids), request, 0)
        request.seqs.append(seq)
        self.requests[request.request_id] = request
        self.waiting.push(seq)

    def abort(self, request_id: str) -> RequestOutput | None:
        """Ends a live request now: its blocks are freed and the worker drops its
        sequences with the next step. Returns its last delta, or None if no
        such request is live (it may have just finished)."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        ended = [seq for seq in request.seqs if seq.status is not _FINISHED]
        for seq in ended:
            self.waiting.discard(seq)
            if seq.status is _RUNNING:
                self.block_manager.free(seq.seq_id)
                self.running.remove(seq)
            if seq.introduced:
                self._finished_seq_ids.append(seq.seq_id)
                seq.introduced = False
            seq.finish(FinishReason.ABORT)
        self.num_finished_requests += 1
        return request_delta(request, ended)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def stats(self) -> SchedulerStats:
        bm = self.block_manager
        return SchedulerStats(
            waiting=len(self.waiting),
            running=len(self.running),
            preemptions=self.num_preemptions,
            kv_usage=bm.usage,
            prefix_cache_hit_rate=bm.prefix_cache_hit_rate,
            finished_requests=self.num_finished_requests,
            generated_tokens=self.num_generated_tokens,
            free_blocks=bm.num_free_blocks,
            cached_free_blocks=bm.num_cached_free_blocks,
        )

    @property
    def has_pending_frees(self) -> bool:
        """Whether the next step still has to tell the worker to drop sequences."""
        return bool(self._finished_seq_ids)

    def validate(self, request: Request) -> None:
        """Raises what add_request would for a request that cannot run here."""
        config = self.config
        num_prompt = len(request.prompt_token_ids)
        max_tokens = request.sampling.max_tokens
        if not request.request_id:
            raise InvalidArgument("request_id must not be empty")
        if request.request_id in self.requests:
            raise AlreadyExists(f"request {request.request_id!r} is already live")
        if num_prompt == 0:
            raise InvalidArgument("the prompt must hold at least one token")
        if min(request.prompt_token_ids) < 0:
            raise InvalidArgument("prompt token ids must be >= 0")
        if num_prompt + max_tokens > config.max_model_len:
            raise InvalidArgument(
                f"prompt ({num_prompt} tokens) + max_tokens ({max_tokens}) = {num_prompt + max_tokens} "
                f"exceeds max_model_len ({config.max_model_len})"
            )
        if request.n < 1:
            raise InvalidArgument(f"n must be >= 1, got {request.n}")
        if request.best_of is not None and request.best_of < request.n:
            raise InvalidArgument(f"best_of ({request.best_of}) must be >= n ({request.n})")
        if request.num_samples > config.max_num_seqs:
            raise InvalidArgument(
                f"best_of/n ({request.num_samples}) exceeds max_num_seqs ({config.max_num_seqs})"
            )
        needed = self.block_manager.blocks_for(num_prompt + max_tokens)
        if needed > self.block_manager.num_blocks:
            raise InvalidArgument(
                f"prompt + max_tokens needs {needed} KV blocks of {config.block_size} tokens; "
                f"the worker holds {self.block_manager.num_blocks}"
            )

    # ------------------------------------------------------------ schedule

    def schedule(self) -> SchedulerStep:
        if self._in_flight is not None:
            raise FailedPrecondition("the previous step has not been updated yet")
        config = self.config
        b = _StepBuilder(config.max_num_batched_tokens)
        b.finished_seq_ids, self._finished_seq_ids = self._finished_seq_ids, []
        # Several decode steps per call only when nothing is about to start:
        # a waiting prompt or a fork would otherwise wait K steps for its turn.
        multi_step = config.num_scheduler_steps > 1 and not self.waiting and not self._pending_forks
        lookahead = config.num_scheduler_steps - 1 if multi_step else 0
        self._schedule_forks(b)
        self._schedule_decodes(b, lookahead)
        self._schedule_prefills(b)
        if not b.num_preempted:
            self._schedule_waiting(b)
        return self._finish_step(b, multi_step and b.lookahead_ok and not b.has_prefill and not b.new_seqs)

    def _schedule_forks(self, b: _StepBuilder) -> None:
        """Samples 1.. of a request whose prompt was just prefilled join their
        first sample: they share its full prompt blocks and recompute the last
        prompt position to draw their own first token. A parent's partial
        tail block is shared and copied on write; a full tail block is never
        written, so then the child recomputes that whole block instead."""
        bm, bs = self.block_manager, self.config.block_size
        for child in self._pending_forks:
            parent, child.fork_parent = child.fork_parent, None
            if child.status is _FINISHED:
                continue
            num_prompt = child.num_prompt_tokens
            tail = num_prompt % bs
            start = num_prompt - 1 if tail else num_prompt - bs
            if (
                parent.status is not _RUNNING
                or len(self.running) >= self.config.max_num_seqs
                or num_prompt - start > b.token_budget
            ):
                self.waiting.push(child)
                continue
            bm.fork(parent.seq_id, child.seq_id, num_prompt if tail else start)
            update = bm.append_slots(child.seq_id, start, num_prompt)
            if update is None:
                bm.free(child.seq_id)
                self.waiting.push(child)
                continue
            table = bm.block_table(child.seq_id)
            child.num_computed_tokens = start
            self._start_running(child)
            # The worker's fork inherits the parent's full blocks for the
            # child's token count; everything after arrives as new blocks.
            inherited = num_prompt // bs if tail else 0
            b.new_seqs[child.seq_id] = self._new_sequence(child, parent.seq_id if tail else None)
            entry = ScheduledSeq(child.seq_id, start, num_prompt - start, table[inherited:])
            b.add(child, entry, update[1])
        self._pending_forks = []

    def _schedule_decodes(self, b: _StepBuilder, lookahead: int) -> None:
        # The hot loop of a decode-heavy step: locals instead of attribute lookups.
        max_model_len, max_num_seqs = self.config.max_model_len, self.config.max_num_seqs
        append_slots = self.block_manager.append_slots
        running, scheduled, copies = self.running, b.scheduled, b.copies
        i = 0
        while i < len(running) and b.token_budget > 0 and len(scheduled) < max_num_seqs:
            seq = running[i]
            i += 1
            seq_id = seq.seq_id
            if seq_id in scheduled:
                continue
            computed = seq.num_computed_tokens
            if len(seq.token_ids) - computed != 1:
                b.has_prefill = True
                continue
            update = None
            if lookahead and b.lookahead_ok:
                update = append_slots(seq_id, computed, min(computed + 1 + lookahead, max_model_len))
                b.lookahead_ok = update is not None
            if update is None:
                update = append_slots(seq_id, computed, computed + 1) or self._preempt_for(
                    b, seq, computed, computed + 1
                )
                if update is None:
                    break
            new_block_ids, seq_copies = update
            scheduled[seq_id] = (ScheduledSeq(seq_id, computed, 1, new_block_ids), seq)
            b.token_budget -= 1
            if seq_copies:
                copies[seq_id] = seq_copies
        # Out of budget or seats: sequences not visited may still be mid-prefill.
        if not b.has_prefill:
            b.has_prefill = any(len(seq.token_ids) - seq.num_computed_tokens > 1 for seq in running[i:])

    def _schedule_prefills(self, b: _StepBuilder) -> None:
        if not b.has_prefill:
            return
        chunked, max_num_seqs = self.config.enable_chunked_prefill, self.config.max_num_seqs
        running, scheduled = self.running, b.scheduled
        i = 0
        while i < len(running) and b.token_budget > 0 and len(scheduled) < max_num_seqs:
            seq = running[i]
            i += 1
            remaining = len(seq.token_ids) - seq.num_computed_tokens
            if seq.seq_id in scheduled or remaining == 1:
                continue
            count = min(remaining, b.token_budget) if chunked else remaining
            if count > b.token_budget:
                continue
            computed = seq.num_computed_tokens
            update = self.block_manager.append_slots(
                seq.seq_id, computed, computed + count
            ) or self._preempt_for(b, seq, computed, computed + count)
            if update is None:
                break
            entry = ScheduledSeq(seq.seq_id, computed, count, update[0], sample=count == remaining)
            b.add(seq, entry, update[1])

    def _preempt_for(
        self, b: _StepBuilder, seq: Sequence, computed: int, num_tokens: int
    ) -> SlotUpdate | None:
        """Preempts the last-ranked running sequences until `seq`'s slots fit.
        None if `seq` itself had to go."""
        while self._preempt_last(b) is not seq:
            update = self.block_manager.append_slots(seq.seq_id, computed, num_tokens)
            if update is not None:
                return update
        return None

    def _preempt_last(self, b: _StepBuilder) -> Sequence:
        """Preempts the last-ranked running sequence by recompute. It may have
        been scheduled earlier in this call (a decode, when a better-ranked
        prefill needs its blocks); then it is taken out of the step again."""
        seq = self.running.pop()
        if seq.seq_id in b.scheduled:
            b.remove(seq)
        self.block_manager.free(seq.seq_id)
        if seq.introduced:
            b.finished_seq_ids.append(seq.seq_id)
            seq.introduced = False
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.PREEMPTED
        self.waiting.push(seq)
        b.num_preempted += 1
        self.num_preemptions += 1
        return seq

    def _schedule_waiting(self, b: _StepBuilder) -> None:
        config, bm = self.config, self.block_manager
        while self.waiting and b.token_budget > 0 and len(self.running) < config.max_num_seqs:
            seq = self.waiting.peek()
            request = seq.request
            # Prompt logprobs still owed need every prompt position computed, so no hits.
            owes_logprobs = (
                seq.index == 0
                and request.sampling.prompt_logprobs is not None
                and len(request.prompt_logprobs) < seq.num_prompt_tokens - 1
            )
            use_cache = config.enable_prefix_caching and not owes_logprobs
            computed = bm.get_computed_blocks(seq.token_ids, request.cache_key) if use_cache else None
            num_cached = computed.num_tokens if computed is not None else 0
            remaining = len(seq.token_ids) - num_cached
            count = min(remaining, b.token_budget) if config.enable_chunked_prefill else remaining
            if count > b.token_budget:
                break
            table = bm.allocate(seq.seq_id, num_cached + count, computed, request.cache_key)
            if table is None:
                break
            self.waiting.pop()
            if seq.index == 0 and seq.status is SequenceStatus.WAITING:
                request.num_cached_tokens = num_cached
            seq.num_computed_tokens = num_cached
            self._start_running(seq)
            b.new_seqs[seq.seq_id] = self._new_sequence(seq, None)
            b.add(seq, ScheduledSeq(seq.seq_id, num_cached, count, table, sample=count == remaining), [])
            if count < remaining:
                b.has_prefill = True

    def _start_running(self, seq: Sequence) -> None:
        seq.status = _RUNNING
        bisect.insort(self.running, seq, key=_sort_key)

    def _new_sequence(self, seq: Sequence, parent_seq_id: int | None) -> NewSequence:
        return NewSequence(
            seq_id=seq.seq_id,
            token_ids=list(seq.token_ids),
            num_prompt_tokens=seq.num_prompt_tokens,
            sampling=seq.sampling,
            parent_seq_id=parent_seq_id,
            adapter=seq.request.adapter.name if seq.request.adapter is not None else "",
        )

    def _finish_step(self, b: _StepBuilder, multi_step: bool) -> SchedulerStep:
        entries = list(b.scheduled.values())
        if b.has_prefill or b.new_seqs:
            # One-token entries first, chunks after: the split the worker's
            # attention metadata takes, so it need not reorder the batch.
            entries = [e for e in entries if e[0].num_scheduled_tokens == 1] + [
                e for e in entries if e[0].num_scheduled_tokens != 1
            ]
        step_input = StepInput(
            new_seqs=list(b.new_seqs.values()),
            scheduled=[entry for entry, _ in entries],
            finished_seq_ids=b.finished_seq_ids,
            block_copies=[pair for copies in b.copies.values() for pair in copies],
        )
        seqs = [seq for _, seq in entries]
        if multi_step and seqs:
            # Never run a position past max_model_len: K steps from L tokens
            # compute positions L-1 .. L+K-2.
            longest = max(len(seq.token_ids) for seq in seqs)
            step_input.num_steps = max(
                1, min(self.config.num_scheduler_steps, self.config.max_model_len - longest + 1)
            )
        for new in step_input.new_seqs:
            b.scheduled[new.seq_id][1].introduced = True
        step = SchedulerStep(
            step_input,
            seqs,
            num_batched_tokens=self.config.max_num_batched_tokens - b.token_budget,
            num_preempted=b.num_preempted,
        )
        if not step.is_empty:
            self._in_flight = step
        return step

    # ------------------------------------------------------------ update

    def update(self, step: SchedulerStep, output: StepOutput) -> list[RequestOutput]:
        """Applies the worker's output for `step`; returns the requests' deltas."""
        if step is not self._in_flight:
            raise FailedPrecondition("update() must get the step that schedule() returned last")
        self._in_flight = None
        bm, block_size = self.block_manager, self.config.block_size
        by_id = {out.seq_id: out for out in output.outputs}
        num_steps = step.input.num_steps
        changed: dict[Request, list[Sequence]] = {}
        any_finished = False
        num_generated = 0
        for entry, seq in zip(step.input.scheduled, step.seqs, strict=True):
            if seq.status is not _RUNNING:
                continue  # aborted while the step ran
            request = seq.request
            out = by_id.get(seq.seq_id)
            computed = entry.num_computed_tokens + entry.num_scheduled_tokens + num_steps - 1
            seq.num_computed_tokens = computed
            if out is not None and out.prompt_logprobs and seq.index == 0:
                request.add_prompt_logprobs(entry.num_computed_tokens, out.prompt_logprobs)
            if entry.sample:
                if out is None or len(out.tokens) < num_steps:
                    raise CairnError(
                        f"worker returned {0 if out is None else len(out.tokens)} tokens for sequence "
                        f"{seq.seq_id}, expected {num_steps}"
                    )
                if num_steps == 1:
                    reason = seq.append(out.tokens[0])
                    num_generated += 1
                else:
                    for token in out.tokens[:num_steps]:
                        num_generated += 1
                        reason = seq.append(token)
                        if reason is not None:
                            break
                if request in changed:
                    changed[request].append(seq)
                else:
                    changed[request] = [seq]
                if not request.forked and request.num_samples > 1:
                    self._plan_forks(seq)
                if reason is not None:
                    seq.finish(reason)
            if computed // block_size > entry.num_computed_tokens // block_size:
                # A block became full of computed tokens: make it a prefix-cache entry.
                bm.cache_blocks(seq.seq_id, seq.token_ids, min(computed, len(seq.token_ids)))
            if seq.status is _FINISHED:
                self._release(seq)
                any_finished = True
        self.num_generated_tokens += num_generated
        if any_finished:
            self.running = [seq for seq in self.running if seq.status is _RUNNING]
        outputs = []
        for request, seqs in changed.items():
            delta = request_delta(request, seqs)
            if delta is not None:
                outputs.append(delta)
                if delta.finished:
                    del self.requests[request.request_id]
                    self.num_finished_requests += 1
        return outputs

    def _plan_forks(self, parent: Sequence) -> None:
        request = parent.request
        request.forked = True
        for index in range(1, request.num_samples):
            child = Sequence(next(self._seq_ids), request, index)
            child.fork_parent = parent
            request.seqs.append(child)
            self._pending_forks.append(child)

    def _release(self, seq: Sequence) -> None:
        self.block_manager.free(seq.seq_id)
        if seq.introduced:
            self._finished_seq_ids.append(seq.seq_id)
            seq.introduced = False

    # ------------------------------------------------------------ recovery

    def on_worker_lost(self) -> None:
        """The replica's worker died (or was replaced): its KV cache and sequence
        state are gone. Every running sequence is requeued with the tokens it
        has, to be re-prefilled; the step in flight is dropped."""
        self._in_flight = None
        for seq in self.running:
            self.block_manager.free(seq.seq_id)
            seq.num_computed_tokens = 0
            seq.status = SequenceStatus.PREEMPTED
            seq.introduced = False
            self.waiting.push(seq)
        self.running = []
        for child in self._pending_forks:
            child.fork_parent = None
            if child.status is not _FINISHED:
                self.waiting.push(child)
        self._pending_forks = []
        self._finished_seq_ids = []
        self.block_manager.reset_prefix_cache()

    def check_invariants(self) -> None:
        """Raises AssertionError unless scheduler state and block tables agree."""
        bm = self.block_manager
        bm.check_invariants()
        if self.running != sorted(self.running, key=_sort_key):
            raise AssertionError("running is not sorted by rank")
        if len(self.running) > self.config.max_num_seqs:
            raise AssertionError(f"{len(self.running)} running > max_num_seqs {self.config.max_num_seqs}")
        for request in self.requests.values():
            for seq in request.seqs:
                holds = bm.has_table(seq.seq_id)
                if holds != (seq.status is _RUNNING):
                    raise AssertionError(f"{seq} holds blocks: {holds}")
                if (seq.status is _RUNNING) != (seq in self.running):
                    raise AssertionError(f"{seq} and the running list disagree")
                waits = seq.status in (SequenceStatus.WAITING, SequenceStatus.PREEMPTED)
                if waits and seq.fork_parent is None and seq not in self.waiting:
                    raise AssertionError(f"{seq} is neither running nor waiting")


def _sort_key(seq: Sequence) -> tuple:
    return seq.sort_key
