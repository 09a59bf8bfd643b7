"""Losses as sums over their units (label tokens for SFT, pairs for DPO).

The loop divides by the units of the whole optimizer step across every
micro-batch and rank, so gradient accumulation and data parallelism give the
same update as one big batch, and packed batches the same loss as unpacked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .data.batches import Batch, collate, eval_micro_batches
from .data.encode import IGNORE, PairSample
from .data.packing import Row
from .distributed import Dist

# The backend's forward: model inputs in, a transformers output (with .logits) out.
Forward = Callable[..., Any]


def shifted_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next label token, and the mask of real labels; both [batch, length-1]."""
    targets = labels[:, 1:]
    mask = targets != IGNORE
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross entropy over the labelled positions."""
    vocab = logits.shape[-1]
    return F.cross_entropy(
        logits[:, :-1].float().reshape(-1, vocab),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of each row's labelled tokens: [batch]."""
    picked, _ = shifted_logprobs(logits, labels)
    return picked.sum(-1)


@dataclass(frozen=True)
class DpoTerms:
    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def dpo_terms(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> DpoTerms:
    """Sigmoid DPO (Rafailov et al. 2023): -log sigmoid(beta * (policy margin - reference margin))."""
    chosen = policy_chosen - reference_chosen
    rejected = policy_rejected - reference_rejected
    losses = -F.logsigmoid(beta * (chosen - rejected))
    return DpoTerms(losses, beta * chosen.detach(), beta * rejected.detach())


@dataclass(frozen=True)
class MicroResult:
    loss_sum: torch.Tensor
    units: float
    tokens: int
    # Extra sums reported next to the loss (DPO: pairs ranked right).
    stats: dict[str, float]


class SftObjective:
    """Next-token loss on labelled tokens (SFT, LoRA, prefix tuning, pretraining)."""

    def __init__(self, rows: Sequence[Row], pad_id: int) -> None:
        self.rows = rows
        self.pad_id = pad_id

    def __len__(self) -> int:
        return len(self.rows)

    def units(self, indices: Sequence[int]) -> float:
        return float(sum(sum(1 for label in self.rows[i].labels[1:] if label != IGNORE) for i in indices))

    def loss(self, forward: Forward, device: torch.device, indices: Sequence[int]) -> MicroResult:
        batch = collate([self.rows[i] for i in indices], self.pad_id)
        logits = forward(**batch.model_inputs(device)).logits
        loss_sum = lm_loss_sum(logits, batch.labels.to(device))
        return MicroResult(loss_sum, float(batch.num_labels), batch.num_tokens, {})


class DpoObjective:
    """Sigmoid DPO against reference log-probabilities computed once, before any update."""

    def __init__(
        self, pairs: Sequence[PairSample], reference: torch.Tensor, beta: float, pad_id: int
    ) -> None:
        self.pairs = pairs
        self.reference = reference
        self.beta = beta
        self.pad_id = pad_id

    def __len__(self) -> int:
        return len(self.pairs)

    def units(self, indices: Sequence[int]) -> float:
        return float(len(indices))

    def loss(self, forward: Forward, device: torch.device, indices: Sequence[int]) -> MicroResult:
        batch = pairs_batch([self.pairs[i] for i in indices], self.pad_id)
        logits = forward(**batch.model_inputs(device)).logits
        logps = sequence_logprobs(logits, batch.labels.to(device))
        n = len(indices)
        reference = self.reference[list(indices)].to(device)
        terms = dpo_terms(logps[:n], logps[n:], reference[:, 0], reference[:, 1], self.beta)
        ranked = float((terms.chosen_rewards > terms.rejected_rewards).sum())
        return MicroResult(terms.losses.sum(), float(n), batch.num_tokens, {"accuracy": ranked})


def pairs_batch(pairs: Sequence[PairSample], pad_id: int) -> Batch:
    """The chosen rows, then the rejected ones: one forward scores both sides."""
    rows = [Row(p.chosen.input_ids, p.chosen.labels) for p in pairs]
    rows += [Row(p.rejected.input_ids, p.rejected.labels) for p in pairs]
    return collate(rows, pad_id)


@torch.no_grad()
def reference_logprobs(
    forward: Forward,
    device: torch.device,
    pairs: Sequence[PairSample],
    micro_batch_size: int,
    dist: Dist,
    pad_id: int,
) -> torch.Tensor:
    """[pairs, 2] summed log-probs of (chosen, rejected) under `forward`, each rank computing a share."""
    out = torch.zeros((len(pairs), 2), dtype=torch.float64)
    for indices, counted in eval_micro_batches(len(pairs), micro_batch_size, dist.world_size, dist.rank):
        batch = pairs_batch([pairs[i] for i in indices], pad_id)
        logps = sequence_logprobs(forward(**batch.model_inputs(device)).logits, batch.labels.to(device))
        if counted:
            n = len(indices)
            out[indices] = torch.stack([logps[:n], logps[n:]], dim=-1).double().cpu()
    return torch.tensor(dist.sum(out.flatten().tolist()), dtype=torch.float64).view(-1, 2)
