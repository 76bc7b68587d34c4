"""A non-smp model for the `package.module:function` factory test."""

from torch import nn


def build(classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, classes, 1))
