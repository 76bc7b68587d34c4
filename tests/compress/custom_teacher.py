"""A non-smp model for the `package.module:function` factory test."""

from torch import nn


def build(classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, classes, 1))


class FixedSize(nn.Module):
    """A teacher that runs at one input size only: a learned positional embedding is
    added to its first feature map (as a ViT's is to its patch tokens)."""

    def __init__(self, classes: int, size: tuple[int, int]) -> None:
        super().__init__()
        import torch

        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.pos = nn.Parameter(torch.zeros(1, 8, *size))
        self.head = nn.Conv2d(8, classes, 1)

    def forward(self, x):
        return self.head((self.stem(x) + self.pos).relu())


def build_fixed(classes: int, size=(96, 96)) -> nn.Module:
    return FixedSize(classes, tuple(size))
