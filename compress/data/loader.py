"""What the loaders need: :func:`collate` (batches of dataset items), the deterministic
per-epoch :class:`EpochSampler` and :func:`drawn_mixture` (how many samples an epoch drew
from each source of a mixture)."""

from __future__ import annotations

import bisect
import math

import torch


class EpochSampler(torch.utils.data.Sampler):
    """Deterministic per-epoch order (shuffle, or weighted draws for a mixture), sharded
    across DDP ranks. Depends only on (seed, epoch), so a resumed run sees the same data."""

    def __init__(self, n: int, seed: int, weights: torch.Tensor | None = None,
                 num_samples: int | None = None, rank: int = 0, world: int = 1) -> None:
        self.n, self.seed, self.weights = n, seed, weights
        self.num_samples = num_samples or n
        self.rank, self.world, self.epoch = rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        if self.weights is None:
            idx = torch.randperm(self.n, generator=g)
            idx = idx.repeat(math.ceil(self.num_samples / self.n))[: self.num_samples]
        else:
            idx = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g)
        per_rank = len(idx) // self.world
        return iter(idx[self.rank * per_rank : (self.rank + 1) * per_rank].tolist())

    def __len__(self) -> int:
        return self.num_samples // self.world


def collate(batch: list[dict]) -> dict:
    """Stack tensors; keep names and geometry as lists."""
    out = {"image": torch.stack([b["image"] for b in batch]),
           "mask": torch.stack([b["mask"] for b in batch]),
           "index": torch.tensor([b["index"] for b in batch]),
           "name": [b["name"] for b in batch]}
    if "depth" in batch[0]:  # a multi-task run: [N, H, W] metres, 0 = no value
        out["depth"] = torch.stack([b["depth"] for b in batch])
    if "geometry" in batch[0]:
        out["geometry"] = [b["geometry"] for b in batch]
        out["orig_size"] = [b["orig_size"] for b in batch]
    return out


def drawn_mixture(train_set, sampler) -> dict[str, int]:
    """Samples this epoch drew from each source of a mixture (``drawn_0`` = the labelled
    split, ``drawn_k`` = ``data.extra_train[k-1]``); empty for a single source. The draw
    depends only on (seed, epoch), so it can be counted without loading an image."""
    bounds = getattr(train_set, "cumulative_sizes", None)
    if not bounds or len(bounds) < 2:
        return {}
    counts = [0] * len(bounds)
    for i in sampler:
        counts[bisect.bisect_right(bounds, i)] += 1
    return {f"drawn_{k}": n for k, n in enumerate(counts)}
