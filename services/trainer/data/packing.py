"""Rows of the training batches: one sample each, or several packed into one sequence.

A packed row restarts its position ids at every sample. With no attention
mask, transformers reads those restarts as sample boundaries and masks
attention block-diagonally (SDPA and eager through `find_packed_sequence_indices`,
flash-attention through its varlen path), so packed samples never see each
other; the packing test checks that the loss matches the unpacked one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .encode import Sample


@dataclass(frozen=True)
class Row:
    input_ids: list[int]
    labels: list[int]
    # Per-token positions; None for a row holding one sample (0, 1, 2, ...).
    position_ids: list[int] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


def single_rows(samples: Sequence[Sample]) -> list[Row]:
    return [Row(s.input_ids, s.labels) for s in samples]


def pack(samples: Sequence[Sample], max_length: int) -> list[Row]:
    """First-fit decreasing into rows of at most `max_length` tokens (deterministic for equal input)."""
    order = sorted(range(len(samples)), key=lambda i: (-len(samples[i]), i))
    bins: list[list[int]] = []
    room: list[int] = []
    for index in order:
        size = len(samples[index])
        slot = next((b for b, free in enumerate(room) if free >= size), None)
        if slot is None:
            bins.append([index])
            room.append(max_length - size)
        else:
            bins[slot].append(index)
            room[slot] -= size
    rows = []
    for members in bins:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for index in members:
            sample = samples[index]
            ids += sample.input_ids
            labels += sample.labels
            positions += range(len(sample))
        rows.append(Row(ids, labels, positions))
    return rows
