"""Option types shared by the commands of compress, deploy and bench (one name per
concept across commands)."""

from __future__ import annotations

from enum import Enum


class DataKind(str, Enum):
    """The dataset layouts ``--data-kind`` / ``--kind`` accept."""

    camvid = "camvid"
    folder = "folder"
    synthetic = "synthetic"
    cityscapes = "cityscapes"
    voc = "voc"
    ade20k = "ade20k"
    kitti_depth = "kitti_depth"
