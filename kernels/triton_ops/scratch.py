"""Per-device scratch buffers that outlive every CUDA graph captured with them.

The split-merging kernels (decode attention, the GEMV) keep arrival counts,
and the GEMV its partial sums, in buffers shared by all their launches on a
device. A captured graph holds the address it saw, so a buffer that grows is
replaced but never freed: the old one stays valid for the graphs that use it.
"""

from __future__ import annotations

import torch

_BUFFERS: dict[tuple[str, torch.device], torch.Tensor] = {}
_RETIRED: list[torch.Tensor] = []


def scratch(name: str, device: torch.device, count: int, dtype: torch.dtype, zeroed: bool) -> torch.Tensor:
    """At least `count` elements of buffer `name` on `device` (zeros when first made, if
    `zeroed`); grow it on a warm-up call before capture, not under it."""
    key = (name, device)
    buffer = _BUFFERS.get(key)
    if buffer is None or buffer.numel() < count:
        if buffer is not None:
            _RETIRED.append(buffer)
        make = torch.zeros if zeroed else torch.empty
        buffer = _BUFFERS[key] = make(max(count, 1024), dtype=dtype, device=device)
    return buffer
