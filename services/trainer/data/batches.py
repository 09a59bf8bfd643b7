"""Micro-batches: which rows each rank trains on at each optimizer step, and their tensors.

The order is a pure function of (seed, epoch, step), so a resumed run sees
exactly the batches the interrupted one would have. Each epoch's micro-batch
list is padded by wrapping around to a multiple of accumulation x ranks, so
every rank runs the same number of forward passes (collectives stay in step)
and no optimizer step straddles two epochs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .encode import IGNORE
from .packing import Row


@dataclass(frozen=True)
class Schedule:
    num_items: int
    micro_batch_size: int
    accumulation: int
    world_size: int
    seed: int

    @property
    def micro_per_step(self) -> int:
        return self.accumulation * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        micro = math.ceil(self.num_items / self.micro_batch_size)
        return math.ceil(micro / self.micro_per_step)

    def total_steps(self, num_epochs: float, max_steps: int) -> int:
        return max_steps if max_steps > 0 else max(1, math.ceil(num_epochs * self.steps_per_epoch))

    def epoch_of(self, step: int) -> float:
        return step / self.steps_per_epoch

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """Item indices of `rank`'s micro-batches for optimizer step `step` (0-based), in order."""
        epoch, within = divmod(step, self.steps_per_epoch)
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.num_items, generator=generator).tolist()
        micro = [
            order[i : i + self.micro_batch_size] for i in range(0, self.num_items, self.micro_batch_size)
        ]
        needed = self.steps_per_epoch * self.micro_per_step
        micro += [micro[i % len(micro)] for i in range(needed - len(micro))]
        base = within * self.micro_per_step
        return [micro[base + j * self.world_size + rank] for j in range(self.accumulation)]


def eval_micro_batches(
    num_items: int, micro_batch_size: int, world_size: int, rank: int
) -> list[tuple[list[int], bool]]:
    """`rank`'s share of the evaluation set as (indices, counted): every rank gets as many forward passes,
    the ones that only keep collectives in step are not counted."""
    micro = [
        list(range(i, min(i + micro_batch_size, num_items))) for i in range(0, num_items, micro_batch_size)
    ]
    rounds = math.ceil(len(micro) / world_size)
    out = []
    for r in range(rounds):
        index = r * world_size + rank
        out.append((micro[index], True) if index < len(micro) else (micro[0], False))
    return out


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor
    labels: torch.Tensor
    # Set for rows of one sample (right padding); None for packed rows, whose position_ids are set.
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    num_tokens: int

    @property
    def num_labels(self) -> int:
        return int((self.labels[:, 1:] != IGNORE).sum())

    def model_inputs(self, device: torch.device) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": self.input_ids.to(device, non_blocking=True)}
        if self.attention_mask is not None:
            inputs["attention_mask"] = self.attention_mask.to(device, non_blocking=True)
        if self.position_ids is not None:
            inputs["position_ids"] = self.position_ids.to(device, non_blocking=True)
        return inputs


def collate(rows: Sequence[Row], pad_id: int) -> Batch:
    """Right-padded tensors. Packed rows' padding is a segment of its own (positions from 0), so it
    never joins the last sample's attention block."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    packed = any(r.position_ids is not None for r in rows)
    mask = None if packed else torch.zeros((len(rows), width), dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long) if packed else None
    for i, row in enumerate(rows):
        n = len(row)
        ids[i, :n] = torch.tensor(row.input_ids)
        labels[i, :n] = torch.tensor(row.labels)
        if mask is not None:
            mask[i, :n] = 1
        if positions is not None:
            own = row.position_ids if row.position_ids is not None else list(range(n))
            positions[i, :n] = torch.tensor(own)
            positions[i, n:] = torch.arange(width - n)
    return Batch(ids, labels, mask, positions, num_tokens=sum(len(r) for r in rows))
