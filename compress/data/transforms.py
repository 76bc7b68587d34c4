"""Image/mask transforms shared by training, evaluation, export checks and bench.

Images travel as uint8 ``[H, W, 3]`` numpy arrays until :func:`normalize`, which is the one
place normalisation happens (the model spec's mean/std).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def normalize(image: np.ndarray, mean, std) -> np.ndarray:
    """uint8 ``[H, W, 3]`` or ``[N, H, W, 3]`` -> float32 ``[3, H, W]`` / ``[N, 3, H, W]``."""
    x = image.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def denormalize(x: torch.Tensor | np.ndarray, mean, std) -> np.ndarray:
    """float ``[3, H, W]`` -> uint8 ``[H, W, 3]`` for pictures."""
    x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, np.float32)
    x = np.moveaxis(x, 0, -1) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def resize_pair(image: np.ndarray, mask: np.ndarray | None, size: tuple[int, int]):
    """Resize image (bilinear) and mask (nearest) to ``size = (H, W)``."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image, mask
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
    image = t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    if mask is not None:
        m = torch.from_numpy(np.ascontiguousarray(mask))[None, None].float()
        mask = F.interpolate(m, size=(h, w), mode="nearest")[0, 0].to(torch.int64).numpy()
    return image, mask


class TrainAugment:
    """Random scale then random crop (padded with the ignore index), flip, colour jitter.

    Geometry is drawn once per call and returned, so cached teacher outputs can follow the
    same crop and flip as the image.
    """

    def __init__(
        self,
        size: tuple[int, int],
        scale_range: tuple[float, float] = (0.75, 1.25),
        hflip: bool = True,
        color_jitter: float = 0.2,
        ignore_index: int = 255,
    ) -> None:
        self.size, self.scale_range, self.hflip = size, scale_range, hflip
        self.color_jitter, self.ignore_index = color_jitter, ignore_index

    def sample_geometry(self, rng: np.random.Generator, src_hw: tuple[int, int]) -> dict:
        h, w = self.size
        # base scale maps the source onto the target size, then a random factor on top
        base = max(h / src_hw[0], w / src_hw[1])
        s = base * rng.uniform(*self.scale_range)
        sh, sw = max(1, round(src_hw[0] * s)), max(1, round(src_hw[1] * s))
        top = int(rng.integers(0, max(sh - h, 0) + 1))
        left = int(rng.integers(0, max(sw - w, 0) + 1))
        flip = bool(self.hflip and rng.random() < 0.5)
        return {"scaled": (sh, sw), "top": top, "left": left, "flip": flip}

    def apply_geometry(self, t: torch.Tensor, geo: dict, mode: str, fill: float) -> torch.Tensor:
        """Apply a sampled geometry to a ``[C, H, W]`` tensor (image, mask or logits)."""
        h, w = self.size
        sh, sw = geo["scaled"]
        x = t[None].float()
        if mode == "nearest":
            x = F.interpolate(x, size=(sh, sw), mode="nearest")
        else:
            x = F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=False)
        x = x[0]
        out = torch.full((x.shape[0], max(h, sh), max(w, sw)), fill, dtype=x.dtype, device=x.device)
        out[:, :sh, :sw] = x
        out = out[:, geo["top"] : geo["top"] + h, geo["left"] : geo["left"] + w]
        if geo["flip"]:
            out = out.flip(-1)
        return out

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        geo = self.sample_geometry(rng, image.shape[:2])
        img = self.apply_geometry(torch.from_numpy(image).permute(2, 0, 1), geo, "bilinear", 0.0)
        msk = self.apply_geometry(torch.from_numpy(mask.astype(np.int64))[None], geo, "nearest",
                                  float(self.ignore_index))[0]
        img = img.permute(1, 2, 0).numpy()
        if self.color_jitter > 0:
            j = self.color_jitter
            img = img * rng.uniform(1 - j, 1 + j)  # brightness
            mean = img.mean()
            img = (img - mean) * rng.uniform(1 - j, 1 + j) + mean  # contrast
        img = np.clip(img, 0, 255).round().astype(np.uint8)
        return img, msk.to(torch.int64).numpy(), geo
