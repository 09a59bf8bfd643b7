"""Packs a step's scheduled sequences into model inputs with one host-to-device copy.

`InputBatchBuilder.build` gathers the batch on the host with vectorized numpy
over the `SequenceTable` matrices (no Python loop over tokens); `upload`
writes every int32 array into one pinned staging buffer and copies it to the
device at once, so a step costs a single H2D transfer however many arrays
the attention metadata needs.

Sequences computing one token (decodes) are ordered first, chunks after, which
is the split `AttentionMetadata` expects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from cairn.kernels.reference.lora import lora_segments
from cairn.services.worker.lora.layer import LoRAMapping
from cairn.services.worker.models import AttentionMetadata
from cairn.services.worker.sequence_table import SeqState, SequenceTable


@dataclass
class PromptLogprobSpan:
    """Logits rows [logits_row, logits_row + count) score prompt tokens
    first_position + 1 ... first_position + count of `state`."""

    state: SeqState
    logits_row: int
    first_position: int
    count: int


@dataclass
class HostBatch:
    """A step's inputs on the host, batch order, plus what reading its logits needs."""

    input_ids: np.ndarray  # [T]
    positions: np.ndarray  # [T]
    slot_mapping: np.ndarray  # [T]
    seq_lens: np.ndarray  # [S], cached + scheduled
    block_tables: np.ndarray  # [S, W]
    num_decodes: int
    # [S - num_decodes + 1] offsets of the chunks among the prefill rows; None without chunks.
    query_start_loc: np.ndarray | None
    # Rows of the hidden states that need logits; None means all of them.
    logits_indices: np.ndarray | None
    # The sequences that sample, their table rows, and their rows in the logits
    # (None: logits row i is sampled[i]).
    sampled: list[SeqState]
    sampled_rows: np.ndarray
    sample_rows: np.ndarray | None = None
    prompt_logprobs: list[PromptLogprobSpan] = field(default_factory=list)
    # Tokens grouped by LoRA adapter slot ([T] and [max_loras + 1], see `kernels.add_lora`);
    # None when no token of the batch runs with an adapter.
    lora_order: np.ndarray | None = None
    lora_starts: np.ndarray | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens)

    @property
    def all_decode(self) -> bool:
        return self.num_decodes == self.num_seqs


@dataclass
class DeviceBatch:
    input_ids: torch.Tensor  # [T] int32
    positions: torch.Tensor  # [T] int32
    meta: AttentionMetadata
    logits_indices: torch.Tensor | None
    lora: LoRAMapping | None = None


class Staging:
    """A pinned int32 host buffer and its device twin.

    Two host buffers alternate, each guarded by an event recorded after its
    copy was queued, so the host can fill the next step's inputs while the
    device still reads the last ones (multi-step decode never syncs between
    steps). On the CPU the "device" buffer is the host buffer itself.
    """

    def __init__(self, capacity: int, device: torch.device) -> None:
        self.on_host = device.type == "cpu"
        count = 1 if self.on_host else 2
        self._hosts = [
            torch.zeros(capacity, dtype=torch.int32, pin_memory=not self.on_host) for _ in range(count)
        ]
        self._arrays = [host.numpy() for host in self._hosts]
        # Synchronizing on a never-recorded event returns at once.
        self._events = [] if self.on_host else [torch.Event(device) for _ in range(count)]
        self.device = (
            self._hosts[0] if self.on_host else torch.zeros(capacity, dtype=torch.int32, device=device)
        )
        self._current = 0

    def host(self) -> np.ndarray:
        """The next host buffer, once the device has finished copying out of it."""
        self._current = (self._current + 1) % len(self._hosts)
        if self._events:
            self._events[self._current].synchronize()
        return self._arrays[self._current]

    def upload(self, count: int) -> torch.Tensor:
        """Copies the first `count` ints of the current host buffer; returns the device view."""
        if self.on_host:
            return self.device[:count]
        self.device[:count].copy_(self._hosts[self._current][:count], non_blocking=True)
        self._events[self._current].record()
        return self.device[:count]


class InputBatchBuilder:
    def __init__(
        self,
        table: SequenceTable,
        max_num_tokens: int,
        max_num_seqs: int,
        device: torch.device,
        max_loras: int = 0,
    ) -> None:
        self.table = table
        self.block_size = table.block_size
        self.max_loras = max_loras
        capacity = 4 * max_num_tokens + 2 * max_num_seqs + 1 + max_num_seqs * table.max_blocks_per_seq
        if max_loras:
            capacity += max_num_tokens + max_loras + 1
        self.staging = Staging(capacity, device)

    def build(
        self,
        states: list[SeqState],
        rows: np.ndarray,
        starts: np.ndarray,
        counts: np.ndarray,
        sample: np.ndarray,
    ) -> HostBatch:
        """Per sequence: its table row, tokens already cached, tokens to compute, whether it samples."""
        prefill = counts != 1
        num_decodes = len(states) - int(prefill.sum())
        if num_decodes and prefill[:num_decodes].any():
            order = np.argsort(prefill, kind="stable")
            states = [states[i] for i in order]
            rows, starts, counts, sample = rows[order], starts[order], counts[order], sample[order]
        table, block_size = self.table, self.block_size
        seq_lens = starts + counts
        if num_decodes == len(states):
            positions, token_rows = starts, rows
            ends = np.arange(1, len(states) + 1)
        else:
            ends = np.cumsum(counts)
            positions = np.arange(ends[-1]) - np.repeat(ends - counts - starts, counts)
            token_rows = np.repeat(rows, counts)
        slots = table.block_tables[token_rows, positions // block_size].astype(np.int64) * block_size
        slots += positions % block_size
        width = -(-int(seq_lens.max()) // block_size)
        batch = HostBatch(
            input_ids=table.token_ids[token_rows, positions],
            positions=positions,
            slot_mapping=slots,
            seq_lens=seq_lens,
            block_tables=table.block_tables[rows, :width],
            num_decodes=num_decodes,
            query_start_loc=None,
            logits_indices=None,
            sampled=[s for s, flag in zip(states, sample, strict=True) if flag],
            sampled_rows=rows[sample],
        )
        if self.max_loras:
            token_slots = table.lora_slots[token_rows]
            if (token_slots >= 0).any():
                order, starts = lora_segments(torch.from_numpy(token_slots), self.max_loras)
                batch.lora_order, batch.lora_starts = order.numpy(), starts.numpy()
        if num_decodes < len(states):
            batch.query_start_loc = np.concatenate(([0], np.cumsum(counts[num_decodes:])))
        wants_prompt_logprobs = [s.sampling.prompt_logprobs is not None for s in states]
        if any(wants_prompt_logprobs):
            self._with_prompt_logprobs(batch, states, starts, counts, sample, ends)
        elif len(batch.sampled) != batch.num_tokens:
            batch.logits_indices = (ends - 1)[sample]
        return batch

    def _with_prompt_logprobs(
        self,
        batch: HostBatch,
        states: list[SeqState],
        starts: np.ndarray,
        counts: np.ndarray,
        sample: np.ndarray,
        ends: np.ndarray,
    ) -> None:
        """Logits for every chunk position that predicts a prompt token, plus each sampled last row."""
        pieces, sample_rows = [], []
        num_rows = 0
        for i, state in enumerate(states):
            start, count, offset = int(starts[i]), int(counts[i]), int(ends[i] - counts[i])
            if state.sampling.prompt_logprobs is not None:
                scored = max(0, min(start + count, len(state.prompt_ids) - 1) - start)
                if scored:
                    batch.prompt_logprobs.append(PromptLogprobSpan(state, num_rows, start, scored))
                    pieces.append(np.arange(offset, offset + scored))
                    num_rows += scored
            if sample[i]:
                sample_rows.append(num_rows)
                pieces.append(np.array([offset + count - 1]))
                num_rows += 1
        batch.logits_indices = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
        batch.sample_rows = np.asarray(sample_rows, dtype=np.int64)

    def upload(self, batch: HostBatch) -> DeviceBatch:
        """One H2D copy of every int array; the compact layout is
        ids | positions | slots | seq_lens | query_start_loc | block_tables | logits_indices
        | lora_order | lora_starts."""
        host = self.staging.host()
        tokens, seqs, decodes = batch.num_tokens, batch.num_seqs, batch.num_decodes
        prefills = seqs - decodes
        sizes = [tokens, tokens, tokens, seqs, 0 if prefills == 0 else prefills + 1, batch.block_tables.size]
        sizes.append(0 if batch.logits_indices is None else len(batch.logits_indices))
        has_lora = batch.lora_order is not None
        sizes += [tokens, self.max_loras + 1] if has_lora else [0, 0]
        offsets = np.cumsum([0, *sizes])
        host[offsets[0] : offsets[1]] = batch.input_ids
        host[offsets[1] : offsets[2]] = batch.positions
        host[offsets[2] : offsets[3]] = batch.slot_mapping
        host[offsets[3] : offsets[4]] = batch.seq_lens
        if prefills:
            host[offsets[4] : offsets[5]] = batch.query_start_loc
        host[offsets[5] : offsets[6]] = batch.block_tables.ravel()
        if batch.logits_indices is not None:
            host[offsets[6] : offsets[7]] = batch.logits_indices
        if has_lora:
            host[offsets[7] : offsets[8]] = batch.lora_order
            host[offsets[8] : offsets[9]] = batch.lora_starts
        device = self.staging.upload(int(offsets[-1]))
        views = [device[offsets[i] : offsets[i + 1]] for i in range(len(sizes))]
        seq_lens = views[3]
        block_tables = views[5].view(seqs, -1)
        meta = AttentionMetadata(slot_mapping=views[2], num_decode_tokens=decodes)
        if decodes:
            meta.decode_seq_lens = seq_lens[:decodes]
            meta.decode_block_tables = block_tables[:decodes]
        if prefills:
            meta.prefill_seq_lens = seq_lens[decodes:]
            meta.prefill_block_tables = block_tables[decodes:]
            meta.prefill_query_start_loc = views[4]
        return DeviceBatch(
            input_ids=views[0],
            positions=views[1],
            meta=meta,
            logits_indices=None if batch.logits_indices is None else views[6],
            lora=LoRAMapping(views[7], views[8]) if has_lora else None,
        )
