"""Worker-side state of every live sequence, so a step only carries deltas.

Token ids and block tables live in two preallocated numpy matrices, one row
per sequence, so a batch's input ids, slots and block tables are gathered
with a few vectorized indexing ops instead of Python loops over tokens. The
prompt and output lists are kept too because the sampler's penalties and
seeds read them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cairn.common.errors import InvalidArgument, NotFound
from cairn.services.worker.sampling_params import SamplingParams
from cairn.services.worker.step import NewSequence


@dataclass(eq=False)
class SeqState:
    """What a sequence's row in the table does not hold: its identity and sampling state."""

    seq_id: int
    row: int
    sampling: SamplingParams
    prompt_ids: list[int]
    output_ids: list[int]
    # Its LoRA adapter's pool slot, -1 for the base model; the adapter stays resident while it lives.
    lora_slot: int = -1


class SequenceTable:
    def __init__(
        self, max_model_len: int, block_size: int, num_blocks: int, vocab_size: int, rows: int
    ) -> None:
        self.max_model_len = max_model_len
        self.block_size = block_size
        self.num_kv_blocks = num_blocks
        self.vocab_size = vocab_size
        self.max_blocks_per_seq = -(-max_model_len // block_size)
        self.token_ids = np.zeros((rows, max_model_len), dtype=np.int32)
        self.block_tables = np.zeros((rows, self.max_blocks_per_seq), dtype=np.int32)
        # Per row: tokens known (computed or not) and blocks in the table.
        self.num_tokens = np.zeros(rows, dtype=np.int64)
        self.num_blocks = np.zeros(rows, dtype=np.int64)
        self.lora_slots = np.full(rows, -1, dtype=np.int32)
        self.seqs: dict[int, SeqState] = {}
        self._free_rows = list(range(rows - 1, -1, -1))

    def __len__(self) -> int:
        return len(self.seqs)

    def get(self, seq_id: int) -> SeqState:
        state = self.seqs.get(seq_id)
        if state is None:
            raise NotFound(f"sequence {seq_id} is unknown to this worker (never introduced, or freed)")
        return state

    def add(self, new: NewSequence, lora_slot: int = -1) -> SeqState:
        """Introduces a sequence (running with the adapter in `lora_slot`, -1: none); an id the
        worker already knows is forgotten and re-learnt."""
        tokens = np.asarray(new.token_ids, dtype=np.int64)
        self._check_tokens(new, tokens)
        parent = self.get(new.parent_seq_id) if new.parent_seq_id is not None else None
        if parent is not None and parent.lora_slot != lora_slot:
            # Its shared blocks hold the parent's adapter's KV.
            raise InvalidArgument(f"sequence {new.seq_id} must run with its parent's adapter")
        self.remove(new.seq_id)
        state = SeqState(
            seq_id=new.seq_id,
            row=self._take_row(),
            sampling=new.sampling,
            prompt_ids=list(new.token_ids[: new.num_prompt_tokens]),
            output_ids=list(new.token_ids[new.num_prompt_tokens :]),
            lora_slot=lora_slot,
        )
        row = state.row
        self.lora_slots[row] = lora_slot
        self.token_ids[row, : len(tokens)] = tokens
        self.num_tokens[row] = len(tokens)
        self.num_blocks[row] = 0
        self.seqs[new.seq_id] = state
        if parent is not None:
            # A fork shares only its parent's full blocks: those are immutable,
            # while the parent's partial last block will keep changing. The
            # scheduler appends the fork's own tail block (a copy-on-write
            # destination of block_copies) through new_block_ids.
            shared = min(len(tokens) // self.block_size, int(self.num_blocks[parent.row]))
            self.block_tables[row, :shared] = self.block_tables[parent.row, :shared]
            self.num_blocks[row] = shared
        return state

    def held_lora_slots(self) -> set[int]:
        """The adapter slots live sequences run with."""
        return {state.lora_slot for state in self.seqs.values() if state.lora_slot >= 0}

    def remove(self, seq_id: int) -> bool:
        state = self.seqs.pop(seq_id, None)
        if state is None:
            return False
        self._free_rows.append(state.row)
        return True

    def append_blocks(self, state: SeqState, block_ids: list[int]) -> None:
        """Block ids must already be checked: in range, and within max_blocks_per_seq in all."""
        start = int(self.num_blocks[state.row])
        self.block_tables[state.row, start : start + len(block_ids)] = block_ids
        self.num_blocks[state.row] = start + len(block_ids)

    def append_tokens(self, states: list[SeqState], rows: np.ndarray, token_ids: list[list[int]]) -> None:
        """Appends token_ids[i] (the same count for every sequence) to states[i], whose row is rows[i]."""
        steps = len(token_ids[0])
        positions = self.num_tokens[rows, None] + np.arange(steps)
        # A sequence at max_model_len still reports its last token, but can
        # never be computed further, so there is nothing to store.
        fits = positions < self.max_model_len
        self.token_ids[np.broadcast_to(rows[:, None], positions.shape)[fits], positions[fits]] = np.asarray(
            token_ids, dtype=np.int32
        )[fits]
        self.num_tokens[rows] += steps
        for state, tokens in zip(states, token_ids, strict=True):
            state.output_ids += tokens

    def _check_tokens(self, new: NewSequence, tokens: np.ndarray) -> None:
        if not 0 < len(tokens) <= self.max_model_len:
            raise InvalidArgument(
                f"sequence {new.seq_id} has {len(tokens)} tokens; it needs 1 to max_model_len "
                f"({self.max_model_len})"
            )
        if not 0 <= new.num_prompt_tokens <= len(tokens):
            raise InvalidArgument(f"sequence {new.seq_id}: num_prompt_tokens must be in [0, {len(tokens)}]")
        if tokens.min() < 0 or tokens.max() >= self.vocab_size:
            raise InvalidArgument(
                f"sequence {new.seq_id} has token ids outside the vocabulary [0, {self.vocab_size})"
            )

    def _take_row(self) -> int:
        if not self._free_rows:
            rows = len(self.num_tokens)
            self.token_ids = np.concatenate([self.token_ids, np.zeros_like(self.token_ids)])
            self.block_tables = np.concatenate([self.block_tables, np.zeros_like(self.block_tables)])
            self.num_tokens = np.concatenate([self.num_tokens, np.zeros_like(self.num_tokens)])
            self.num_blocks = np.concatenate([self.num_blocks, np.zeros_like(self.num_blocks)])
            self.lora_slots = np.concatenate([self.lora_slots, np.full_like(self.lora_slots, -1)])
            self._free_rows = list(range(2 * rows - 1, rows - 1, -1))
        return self._free_rows.pop()
