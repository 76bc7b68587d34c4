"""Pseudo-labels: frozen teacher(s) label a folder of images, confident pixels only.

:func:`pseudo_label` runs one or more teachers over every image of a folder (optionally
with flip and multi-scale test-time augmentation), averages their class probabilities,
and writes one PNG mask per image where pixels below the confidence threshold carry the
ignore index. The output is a dataset in the ``folder`` layout, ready for
``data.extra_train`` (``kind: folder``)::

    out/classes.txt        one class name a line (the student's label set)
    out/images/<name>      links to (or copies of) the source images
    out/masks/<stem>.png   pseudo-labels, ignore index where the teachers are unsure
    out/stats.json         kept-pixel fractions (overall and per class), skipped images
    out/previews/*.png     image | pseudo-label (ignored: black) | confidence
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from compress.classmap import map_classes, parse_class_map
from compress.data import DataError, normalize, read_image, resize_pair
from compress.data.datasets import IMAGE_EXTS, read_mask
from compress.devices import resolve_device
from compress.errors import InputError
from compress.hf import is_hf_dir, load_hf_model
from compress.io import atomic_write, atomic_write_json, atomic_write_text
from compress.metrics import scores, update_confusion, weak_teacher
from compress.models import load_model
from compress.outdir import open_out
from compress.viz import colorize


def _round32(v: float) -> int:
    return max(32, round(v / 32) * 32)


# test-time scales: each is a full pass of every teacher; 100 scales ran for hours
MAX_SCALES = 8
MAX_SCALE = 4.0  # 100 made every pass 10,000 times the pixels

# an ensemble member whose mIoU on the labelled images is below this share of the best
# member's is warned about, even when it is above chance
FAR_BELOW_BEST = 0.5


def teacher_weights(weights: list[float] | None, count: int) -> list[float]:
    """``--teacher-weight`` values normalised to sum to 1; equal weights when not given.

    Raises:
        ValueError: not one weight per teacher, or a weight that is not a positive number.
    """
    if not weights:
        return [1.0 / count] * count
    if len(weights) != count:
        raise InputError(f"--teacher-weight given {len(weights)} times for {count} --teacher "
                         "checkpoint(s): give one weight per teacher, in the same order")
    bad = [w for w in weights if not (np.isfinite(w) and w > 0)]
    if bad:
        raise InputError(f"--teacher-weight {bad[0]:g}: weights must be positive numbers")
    return [w / sum(weights) for w in weights]


class Ensemble:
    """Frozen teachers whose softmax outputs are averaged over scales and flips, then
    combined by their (normalised) weights."""

    def __init__(self, checkpoints: list[str | Path], device: torch.device,
                 size: tuple[int, int] | None = None, scales: tuple[float, ...] = (1.0,),
                 flip: bool = False, weights: list[float] | None = None) -> None:
        if not checkpoints:
            raise InputError("give at least one --teacher checkpoint")
        self.weights = teacher_weights(weights, len(checkpoints))
        self.checkpoints = [str(ck) for ck in checkpoints]
        self.models, self.specs = [], []
        for ck in checkpoints:
            model, spec = (load_hf_model(ck, what="--teacher", device=device) if is_hf_dir(ck)
                           else load_model(ck, device=device, return_spec=True))
            for p in model.parameters():
                p.requires_grad_(False)
            self.models.append(model.eval())
            self.specs.append(spec)
        names = self.specs[0].class_names
        for ck, spec in zip(checkpoints[1:], self.specs[1:]):
            if spec.class_names != names:
                raise InputError(f"{ck}: classes {spec.class_names} differ from "
                                 f"{checkpoints[0]}'s {names}; an ensemble needs one label set")
        self.class_names, self.device = list(names), device
        self.size, self.scales, self.flip = size, tuple(scales), flip

    @torch.no_grad()
    def member_probs(self, image: np.ndarray) -> list[torch.Tensor]:
        """Each teacher's class probabilities ``[Ct, H0, W0]`` for a uint8 ``[H0, W0, 3]``
        image, averaged over its scales and flips."""
        h0, w0 = image.shape[:2]
        out = []
        for model, spec in zip(self.models, self.specs):
            base = self.size or tuple(spec.input_size)
            total, n = 0, 0
            for s in self.scales:
                hw = (_round32(base[0] * s), _round32(base[1] * s))
                x = normalize(resize_pair(image, None, hw)[0], spec.mean, spec.std)
                x = torch.from_numpy(x)[None].to(self.device)
                p = model(x).float().softmax(1)
                if self.flip:
                    p = p + model(x.flip(-1)).float().softmax(1).flip(-1)
                    n += 1
                total = total + F.interpolate(p, size=(h0, w0), mode="bilinear",
                                              align_corners=False)[0]
                n += 1
            out.append((total / n).cpu())
        return out

    def probs(self, image: np.ndarray, members: list[torch.Tensor] | None = None) -> torch.Tensor:
        """The weighted ensemble's probabilities ``[Ct, H0, W0]`` (from ``members`` when
        :meth:`member_probs` already ran on this image)."""
        members = self.member_probs(image) if members is None else members
        return sum(w * p for w, p in zip(self.weights, members))


def _mapped(probs: torch.Tensor, cmap: torch.Tensor | None) -> torch.Tensor:
    """Teacher probabilities ``[Ct, H, W]`` in the output classes (plus an ``ignore``
    channel last when a class map is set)."""
    return map_classes(probs, cmap, renormalise=False)


def check_members(ens: Ensemble, confusions: list[torch.Tensor], names: list[str],
                  images: int) -> list[dict]:
    """Score each ensemble member on the labelled images; a member at chance level
    (:func:`compress.metrics.weak_teacher`, the distill preflight's test) or far below the
    best member gets a one-line ``warning``. ``images == 0``: nothing to score on."""
    rows = [{"checkpoint": ck, "weight": w, "miou": None, "warning": None}
            for ck, w in zip(ens.checkpoints, ens.weights)]
    if not images:
        return rows
    for row, conf in zip(rows, confusions):
        score = scores(conf, names)
        row["miou"] = score["miou"]
        row["warning"] = weak_teacher(score, conf)
    best = max(r["miou"] for r in rows)
    for row in rows:
        if row["warning"] is None and row["miou"] < FAR_BELOW_BEST * best:
            row["warning"] = (f"mIoU {100 * row['miou']:.2f}, far below the best "
                              f"member's {100 * best:.2f}")
    return rows


def list_images(folder: Path) -> tuple[list[Path], list[str]]:
    """Image files of a folder (sorted) and the names of the other files in it."""
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    images, other = [], []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
            images.append(p)
        elif p.is_file() and not p.name.startswith("."):
            other.append(p.name)
    return images, other


def _write_png(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda p: Image.fromarray(array).save(p, format="PNG"))


def _link_or_copy(src: Path, dst: Path, copy: bool) -> None:
    """``dst`` (a file of ours, claimed in the output's listing) becomes a link to, or a
    copy of, ``src``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    if not copy:
        try:
            os.symlink(src.resolve(), dst)
            return
        except OSError:  # file systems without symlinks: fall back to a copy
            pass
    atomic_write(dst, lambda p: shutil.copyfile(src, p))


def _preview(path: Path, image: np.ndarray, label: np.ndarray, conf: np.ndarray,
             classes: int) -> None:
    grey = np.repeat((conf * 255).clip(0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    strip = np.concatenate([image, colorize(label, classes), grey], axis=1)
    if strip.shape[0] > 240:
        w = round(strip.shape[1] * 240 / strip.shape[0])
        strip = np.asarray(Image.fromarray(strip).resize((w, 240), Image.BILINEAR))
    _write_png(path, strip)


def pseudo_label(teachers: list[str | Path], images: str | Path, out: str | Path, *,
                 threshold: float = 0.7, class_thresholds: dict[str, float] | None = None,
                 tta_flip: bool = False, scales: tuple[float, ...] = (1.0,),
                 class_map: str | Path | None = None, size: tuple[int, int] | None = None,
                 ignore_index: int | None = None, truth: str | Path | None = None,
                 copy_images: bool = False, previews: int = 4, device: str = "cpu",
                 show: bool = True, teacher_weights: list[float] | None = None,
                 depth: str | Path | None = None) -> dict:
    """Label every image in ``images`` with the confident pixels of a teacher ensemble.

    Args:
        teachers: segcompress checkpoints; all must share one label set.
        images: a folder of images (labelled or not; only the images are read).
        out: output dataset folder (``folder`` layout, see the module docstring).
        threshold: minimum averaged probability of the winning class for a pixel to keep
            its label.
        class_thresholds: per-class overrides, by (student) class name.
        tta_flip: also average the horizontally flipped input.
        scales: input scales, relative to ``size``, averaged.
        class_map: YAML file naming the output classes and mapping teacher classes onto
            them, hard or split (see :mod:`compress.classmap`); a pixel takes the argmax of
            the mapped probabilities.
        size: ``(H, W)`` the teachers see at scale 1; default each teacher's input size.
        ignore_index: value of unsure pixels; default the first teacher's ignore index
            (255 when that is a class id of the output label set).
        truth: optional folder of ground-truth masks (``<stem>.png``, output classes) to
            score the kept pixels and each teacher against (a teacher at chance level or
            far below the best one is warned about; without it that check is skipped).
            pixels against.
        copy_images: copy the images into ``out/images`` instead of linking them.
        previews: how many preview pictures to write.
        teacher_weights: one positive weight per teacher (normalised); default equal.
        depth: optional folder of depth maps named like the images (``<stem>.png`` 16-bit
            mm or ``<stem>.npy`` metres); each labelled image's map is linked (or copied)
            into ``out/depth/``, so the output is a multi-task source (pseudo masks + real
            depth). Images without a map are listed in the stats.

    Returns:
        The statistics also written to ``out/stats.json``.

    Raises:
        DataError: the image folder is missing or holds no image.
        ValueError: bad thresholds, class names, class map or ignore index.
    """
    images, out_path = Path(images), Path(out)
    if out_path.resolve() == images.resolve() or images.resolve() in out_path.resolve().parents:
        raise InputError(f"--out {out_path} must not be the image folder or inside it")
    if out_path.resolve() in images.resolve().parents:
        raise InputError(f"--images {images} is inside --out {out_path}: the output would "
                         "replace its own inputs; give an --out outside the image folder")
    out = open_out(out_path)  # checked before any work; see compress.outdir
    if not 0 < threshold <= 1:
        raise InputError(f"threshold {threshold} must be in (0, 1]")
    if not scales or any(not 0 < s <= MAX_SCALE for s in scales):
        raise InputError(f"--scales {','.join(f'{s:g}' for s in scales)}: each scale must be "
                         f"in (0, {MAX_SCALE:g}] (a factor of the teachers' input size)")
    if len(scales) > MAX_SCALES:
        raise InputError(f"--scales: {len(scales)} scales given, at most {MAX_SCALES} "
                         "(each one is a full pass of every teacher over every image)")
    dev = resolve_device(device)
    ens = Ensemble([Path(t) for t in teachers], dev, size, scales, tta_flip, teacher_weights)
    t_names = ens.class_names
    if class_map is not None:  # a last column collects the classes mapped to ignore
        names, m = parse_class_map(Path(class_map), t_names)
        cmap = torch.cat([m, (1 - m.sum(1, keepdim=True)).clamp_min(0)], 1)
    else:
        names, cmap = t_names, None
    c = len(names)
    if ignore_index is None:
        ignore_index = ens.specs[0].ignore_index
        if 0 <= ignore_index < c:  # a teacher class id cannot double as the ignore value
            ignore_index = 255
    if 0 <= ignore_index < c or not 0 <= ignore_index < 65536:
        raise InputError(f"ignore index {ignore_index} clashes with class ids 0..{c - 1} "
                         "or does not fit a PNG mask")
    thr = torch.full((c + 1,), float(threshold))
    for name, v in (class_thresholds or {}).items():
        if name not in names:
            raise InputError(f"--class-threshold {name}: not a class; classes are {names}")
        if not 0 < v <= 1:
            raise InputError(f"--class-threshold {name}={v} must be in (0, 1]")
        thr[names.index(name)] = float(v)
    depth_dir = Path(depth) if depth is not None else None
    if depth_dir is not None and not depth_dir.is_dir():
        raise DataError(f"--depth {depth_dir}: depth folder not found")
    files, other = list_images(images)
    if not files:
        raise DataError(f"{images}: no images ({', '.join(IMAGE_EXTS)})")
    dtype = np.uint8 if max(ignore_index, c - 1) < 256 else np.uint16

    # every name this run may write, claimed before the first write: a file there that
    # the toolkit did not write (or that was edited since) stops the run untouched
    stems = list(dict.fromkeys(p.stem for p in files))
    planned = ["classes.txt", "stats.json"] + [f"masks/{t}.png" for t in stems]
    planned += [f"images/{p.name}" for p in files]
    planned += [f"previews/{t}.png" for t in stems[:max(previews, 0)]]
    if depth_dir is not None:
        planned += [f"depth/{p.stem}{x}" for p in files for x in (".png", ".npy")
                    if (depth_dir / f"{p.stem}{x}").is_file()]
    out.claim(planned)
    written: dict[str, list[str]] = {"masks": [], "images": [], "depth": [], "previews": []}
    depth_missing: list[str] = []
    atomic_write_text(out / "classes.txt", "\n".join(names) + "\n")
    predicted = np.zeros(c, np.int64)
    kept = np.zeros(c, np.int64)
    pixels, done, skipped, seen = 0, 0, [], {}
    right_kept = right_all = scored_kept = scored_all = truth_images = 0
    member_conf = [torch.zeros(c, c, dtype=torch.int64) for _ in ens.models]
    truth_dir = Path(truth) if truth else None
    for path in tqdm(files, desc="pseudo-label", disable=not show):
        if path.stem in seen:
            skipped.append({"name": path.name, "reason": f"same stem as an earlier file "
                            f"({seen[path.stem] or 'skipped'}): masks are named <stem>.png"})
            continue
        seen[path.stem] = path.name
        try:
            image = read_image(path)
        except DataError as e:
            skipped.append({"name": path.name, "reason": str(e)})
            seen[path.stem] = None
            continue
        members = ens.member_probs(image)
        p = _mapped(ens.probs(image, members), cmap)
        conf, label = p.max(0)
        keep = (conf >= thr[label]) & (label < c)
        mask = torch.where(keep, label, torch.full_like(label, ignore_index)).numpy()
        _write_png(out / "masks" / f"{path.stem}.png", mask.astype(dtype))
        _link_or_copy(path, out / "images" / path.name, copy_images)
        written["masks"].append(f"{path.stem}.png")
        written["images"].append(path.name)
        if depth_dir is not None:
            found = [depth_dir / f"{path.stem}{x}" for x in (".png", ".npy")]
            found = [f for f in found if f.is_file()]
            if found:
                _link_or_copy(found[0], out / "depth" / found[0].name, copy_images)
                written["depth"].append(found[0].name)
            else:
                depth_missing.append(path.name)
        lab = label.numpy()
        predicted += np.bincount(lab[lab < c], minlength=c)[:c]
        kept += np.bincount(mask[keep.numpy()], minlength=c)[:c]
        pixels += lab.size
        if truth_dir is not None and (truth_dir / f"{path.stem}.png").is_file():
            gt = read_mask(truth_dir / f"{path.stem}.png")
            if gt.shape == lab.shape:
                valid = (gt >= 0) & (gt < c)  # whatever the truth's ignore value is
                k = keep.numpy() & valid
                right_kept += int((mask[k] == gt[k]).sum())
                scored_kept += int(k.sum())
                right_all += int((lab[valid] == gt[valid]).sum())
                scored_all += int(valid.sum())
                truth_images += 1
                target = torch.from_numpy(np.where(valid, gt, -1))
                for m_conf, m_probs in zip(member_conf, members):  # each teacher on its own
                    pred = _mapped(m_probs, cmap)[:c].argmax(0)
                    update_confusion(m_conf, pred, target, -1)
        if done < previews:
            name = f"previews/{path.stem}.png"
            out.claim([name])  # claimed above unless earlier images were skipped
            _preview(out / name, image, mask, conf.numpy(), c)
            written["previews"].append(f"{path.stem}.png")
        done += 1

    # a rerun into the same folder: drop what an earlier run listed for images no longer
    # labelled, if still as it wrote them (never a file this command did not write)
    ours = [f"{d}/{n}" for d, names in written.items() for n in names]
    stale = [name for d in written for name in out.remove_stale(ours, under=d)]
    out.record(["classes.txt", *ours])
    stats = {
        "teachers": [str(t) for t in teachers],
        "teacher_weights": ens.weights,
        "members": check_members(ens, member_conf, names, truth_images),
        "member_check": (f"scored on {truth_images} labelled image(s) (--truth)" if truth_images
                         else "skipped: no labelled data (--truth masks) to score the teachers on"),
        "images_dir": str(images),
        "threshold": threshold,
        "class_thresholds": dict(class_thresholds or {}),
        "tta_flip": tta_flip,
        "scales": list(scales),
        "size": list(size) if size else None,
        "class_map": str(class_map) if class_map else None,
        "ignore_index": ignore_index,
        "classes": names,
        "images_done": done,
        "skipped": len(skipped),
        "skipped_files": skipped,
        "other_files": other,
        "removed_stale": sorted({Path(n).stem for n in stale if not n.startswith("previews/")}),
        "depth_dir": str(depth_dir) if depth_dir is not None else None,
        "depth_maps": len(written["depth"]),
        "depth_missing": depth_missing,
        "written": written,
        "pixels": pixels,
        "kept_fraction": float(kept.sum() / pixels) if pixels else 0.0,
        "per_class": {
            n: {"predicted_pixels": int(predicted[i]), "kept_pixels": int(kept[i]),
                "kept_fraction": float(kept[i] / predicted[i]) if predicted[i] else None,
                "share_of_kept": float(kept[i] / kept.sum()) if kept.sum() else None}
            for i, n in enumerate(names)
        },
    }
    if truth_dir is not None:
        stats["truth"] = {
            "dir": str(truth_dir),
            "accuracy_kept": right_kept / scored_kept if scored_kept else None,
            "accuracy_all": right_all / scored_all if scored_all else None,
            "labelled_pixels_scored": scored_all,
        }
    atomic_write_json(out / "stats.json", stats)
    out.record(["stats.json"])
    return stats


def format_summary(stats: dict) -> str:
    """A few lines for the terminal: counts, kept fraction, per class, skipped names."""
    lines = [(f"{stats['images_done']} images labelled, {stats['skipped']} skipped; "
             f"{stats['kept_fraction'] * 100:.1f}% of pixels kept "
             f"(threshold {stats['threshold']}, ignore index {stats['ignore_index']})")]
    for n, v in stats["per_class"].items():
        kf = "-" if v["kept_fraction"] is None else f"{v['kept_fraction'] * 100:.1f}%"
        lines.append(f"  {n:<16} kept {kf:>6} of {v['predicted_pixels']} predicted pixels")
    if "truth" in stats and stats["truth"]["accuracy_kept"] is not None:
        t = stats["truth"]
        lines.append(f"  vs truth: {t['accuracy_kept'] * 100:.1f}% of kept pixels right "
                     f"({t['accuracy_all'] * 100:.1f}% without the threshold)")
    lines += _member_lines(stats)
    for s in stats["skipped_files"]:
        lines.append(f"  skipped {s['name']}: {s['reason']}")
    if stats.get("depth_dir"):
        miss = stats["depth_missing"]
        lines.append(f"  depth maps carried along: {stats['depth_maps']}"
                     + (f"; no map for {len(miss)} image(s): {', '.join(miss[:5])}"
                        + (" ..." if len(miss) > 5 else "") if miss else ""))
    if stats["removed_stale"]:
        lines.append(f"  removed {len(stats['removed_stale'])} label(s) of an earlier run whose "
                     "images are gone or unreadable")
    if stats["other_files"]:
        lines.append(f"  not images, left alone: {', '.join(stats['other_files'][:10])}"
                     + (" ..." if len(stats["other_files"]) > 10 else ""))
    return "\n".join(lines)


def _member_lines(stats: dict) -> list[str]:
    """The ensemble's weights and scores, a warning line per weak member, or why the
    weak-member check was skipped."""
    members, lines = stats["members"], []
    for m in members if len(members) > 1 else []:
        score = "" if m["miou"] is None else f": mIoU {m['miou']:.3f} on the --truth masks"
        lines.append(f"  teacher {m['checkpoint']} (weight {m['weight']:.2f}){score}")
    if len(members) > 1 and all(m["miou"] is None for m in members):
        lines.append(f"  weak-member check {stats['member_check']}")
    lines += [f"warning: teacher {m['checkpoint']} scores {m['warning']} on the --truth masks"
              for m in members if m["warning"]]
    return lines
