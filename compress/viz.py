"""Pictures people would rather look at than read: predictions per epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from compress.data import denormalize
from compress.io import atomic_write
from compress.multitask import seg_logits
from compress.spec import ModelSpec


def palette(classes: int) -> np.ndarray:
    """A fixed colour per class (first ones distinct), black for ignored pixels."""
    base = np.array([[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128],
                     [60, 40, 222], [128, 128, 0], [192, 128, 128], [64, 64, 128],
                     [64, 0, 128], [64, 64, 0], [0, 128, 192]], np.uint8)
    rng = np.random.default_rng(0)
    extra = rng.integers(0, 255, (max(0, classes - len(base)), 3)).astype(np.uint8)
    return np.concatenate([base, extra])[:classes]


def colorize(mask: np.ndarray, classes: int) -> np.ndarray:
    pal = palette(classes)
    out = np.zeros((*mask.shape, 3), np.uint8)
    ok = (mask >= 0) & (mask < classes)
    out[ok] = pal[mask[ok]]
    return out


def labels(logits: torch.Tensor) -> np.ndarray:
    """Class ids ``[H, W]`` of the first image; a single logit means foreground where > 0."""
    ids = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
    return ids[0].cpu().numpy()


def legend_names(spec: ModelSpec) -> list[str]:
    """The names of the classes the figures colour: a binary model's one class after
    ``background`` (its masks are 0 / 1)."""
    names = list(spec.class_names)
    return ["background", *names] if spec.classes == 1 else names


def save_epoch_visual(path: Path, student, teacher, dataset, spec: ModelSpec, device,
                      n: int = 3) -> Path:
    """Grid: input | ground truth | teacher | student | overlay | teacher-student
    difference, with a legend of the class colours below."""
    fig, axes, cols = epoch_visual(student, teacher, dataset, spec, device, n)
    return _save_grid(fig, axes, cols, path)


@torch.no_grad()
def epoch_visual(student, teacher, dataset, spec: ModelSpec, device, n: int = 3):
    """The figure :func:`save_epoch_visual` writes, its axes and column titles."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.patches import Patch

    student.eval()
    classes = max(2, spec.classes)  # a binary task: background + its one class
    n = min(n, len(dataset))
    cols = ["input", "ground truth", "teacher", "student", "overlay", "teacher != student"]
    if teacher is None:
        cols = ["input", "ground truth", "prediction", "overlay", "prediction != truth"]
    fig, axes, rows = _grid(dataset, n, cols, spec, device)
    for r, (item, x, img) in enumerate(rows):
        gt = item["mask"].numpy()
        s = labels(seg_logits(student(x)))  # a multi-task student: its "seg" output
        panels = [img, colorize(gt, classes)]
        if teacher is not None:
            t = labels(teacher.predict(x))
            panels.append(colorize(t, classes))
        panels.append(colorize(s, classes))
        panels.append((0.55 * img + 0.45 * colorize(s, classes)).astype(np.uint8))
        ref = t if teacher is not None else np.where(gt == spec.ignore_index, s, gt)
        panels.append((s != ref).astype(np.uint8) * 255)
        for ax, p in zip(axes[r], panels):
            ax.imshow(p, cmap="magma" if p.ndim == 2 else None, vmin=0, vmax=255)
    pal = palette(classes) / 255.0
    handles = [Patch(facecolor=pal[k], edgecolor="none", label=name)
               for k, name in enumerate(legend_names(spec)[:classes])]
    handles.append(Patch(facecolor="black", edgecolor="grey", label="ignored"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 8),
               fontsize=7, frameon=False)
    return fig, axes, cols


def save_depth_visual(path: Path, student, dataset, spec: ModelSpec, device, n: int = 3,
                      task: str = "depth") -> Path:
    """Grid for a multi-task student: input | depth ground truth | predicted depth |
    absolute error on the measured pixels (one colour scale per row, in the task's unit,
    with its colour bar; black where the ground truth has no value)."""
    fig, axes, cols = depth_visual(student, dataset, spec, device, n, task)
    return _save_grid(fig, axes, cols, path)


@torch.no_grad()
def depth_visual(student, dataset, spec: ModelSpec, device, n: int = 3, task: str = "depth"):
    """The figure :func:`save_depth_visual` writes, its axes and column titles."""
    import matplotlib

    matplotlib.use("Agg")
    unit = next((t.unit for t in spec.tasks or () if t.name == task), "m")

    student.eval()
    n = min(n, len(dataset))
    cols = ["input", "depth truth", "depth prediction", "|error| (measured pixels)"]
    fig, axes, rows = _grid(dataset, n, cols, spec, device)
    for r, (item, x, img) in enumerate(rows):
        pred = student(x)[task][0].float().cpu().numpy()
        truth = item["depth"].numpy() if "depth" in item else np.zeros_like(pred)
        valid = truth > 0
        hi = float(max(pred.max(), truth.max(), 1e-3))
        err = np.where(valid, np.abs(pred - truth), 0.0)
        panels = [(img, None), (np.ma.masked_where(~valid, truth), hi), (pred, hi),
                  (np.ma.masked_where(~valid, err), hi)]
        for ax, (p, vmax) in zip(axes[r], panels):
            if vmax is None:
                ax.imshow(p)
            else:
                ax.set_facecolor("black")
                im = ax.imshow(p, cmap="magma_r", vmin=0, vmax=vmax, interpolation="nearest")
        bar = fig.colorbar(im, ax=list(axes[r][1:]), fraction=0.02, pad=0.01)
        bar.set_label(f"depth, |error| ({unit})", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    return fig, axes, cols


def _grid(dataset, n: int, cols: list[str], spec: ModelSpec, device):
    """A figure of ``n`` rows x ``cols`` and the rows' ``(item, image batch, RGB image)``,
    picked evenly over the split (neighbouring frames of a video look alike)."""
    import matplotlib.pyplot as plt

    picks = np.linspace(0, len(dataset) - 1, n).round().astype(int)
    fig, axes = plt.subplots(n, len(cols), figsize=(2.6 * len(cols), 2.2 * n + 0.5),
                             squeeze=False, layout="constrained")

    def rows():
        for i in picks:
            item = dataset[int(i)]
            yield (item, item["image"][None].to(device),
                   denormalize(item["image"], spec.mean, spec.std))

    return fig, axes, rows()


def _save_grid(fig, axes, cols: list[str], path: Path) -> Path:
    """No ticks, the column titles on the first row, written atomically as PNG (the
    figure's constrained layout places the legend and colour bars)."""
    import matplotlib.pyplot as plt

    for r, row in enumerate(axes):
        for c, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
    path = Path(path)
    atomic_write(path, lambda p: fig.savefig(p, dpi=80, format="png"))
    plt.close(fig)
    return path


def save_epoch_figures(folder: Path, epoch: int, student, teacher, val_set, depth_set,
                       spec: ModelSpec, device) -> None:
    """An epoch's figures in ``folder``: ``epoch_NNN.png`` (:func:`save_epoch_visual` on
    ``val_set``) and, with a ``depth_set`` (a multi-task student), ``epoch_NNN_depth.png``
    (:func:`save_depth_visual`)."""
    save_epoch_visual(folder / f"epoch_{epoch:03d}.png", student, teacher, val_set, spec, device)
    if depth_set is not None:
        save_depth_visual(folder / f"epoch_{epoch:03d}_depth.png", student, depth_set, spec,
                          device)
