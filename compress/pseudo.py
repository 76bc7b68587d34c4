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
    out/progress/labelled.jsonl  one record per image (its counts, its mask's sha256)

Nothing is lost on a crash: each image's record is appended as soon as its mask is written,
and a rerun with the same settings keeps every mask whose record, source image and file
are unchanged (only the rest is labelled). Under ``torchrun`` (``WORLD_SIZE`` > 1) the
images still to label are split across the ranks (every ``world``-th image), each rank
appends to ``progress/rank-<r>.jsonl``, and rank 0 merges the records into one
``stats.json`` once all ranks are done; the masks are those of a single-process run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from compress.classmap import map_classes, parse_class_map
from compress.data import DataError, normalize, read_image, resize_pair
from compress.data.datasets import IMAGE_EXTS, read_mask
from compress.devices import distributed_info, init_device, resolve_device
from compress.errors import InputError
from compress.hf import load_segmenter
from compress.io import atomic_write, atomic_write_json, atomic_write_text, sha256_file
from compress.metrics import scores, update_confusion, weak_teacher
from compress.outdir import OutDir, OutputError, open_out
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
            model, spec = load_segmenter(ck, what="--teacher", device=device)
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
        copy_images: copy the images into ``out/images`` instead of linking them.
        previews: how many preview pictures to write.
        teacher_weights: one positive weight per teacher (normalised); default equal.
        depth: optional folder of depth maps named like the images (``<stem>.png`` 16-bit
            mm or ``<stem>.npy`` metres); each labelled image's map is linked (or copied)
            into ``out/depth/``, so the output is a multi-task source (pseudo masks + real
            depth). Images without a map are listed in the stats.

    Returns:
        The statistics also written to ``out/stats.json`` (``{}`` on ranks other than 0).

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
    rank, world = distributed_info()  # torchrun: each rank labels a share, rank 0 merges
    dev = init_device(device, world=world) if world > 1 else resolve_device(device)
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
    unique, skipped = _unique_stems(files)
    settings = {  # what stats.json says the run was asked; with the files' contents, the key
        "teachers": [str(t) for t in teachers],
        "teacher_weights": ens.weights,
        "images_dir": str(images),
        "threshold": threshold,
        "class_thresholds": dict(class_thresholds or {}),
        "tta_flip": tta_flip,
        "scales": list(scales),
        "size": list(size) if size else None,
        "class_map": str(class_map) if class_map else None,
        "ignore_index": ignore_index,
        "classes": names,
    }
    job = _Job(out_path, names, ignore_index, thr, cmap, dtype, copy_images, depth_dir,
               Path(truth) if truth else None,
               _settings_key(settings, ens, class_map, copy_images, depth_dir, truth))

    # every name this run may write, claimed before the first write (by rank 0, before
    # the other ranks start): a file there that the toolkit did not write (or that was
    # edited since) stops the run untouched
    todo: list = [None]
    if rank == 0:
        planned = ["classes.txt", "stats.json", PROGRESS]
        planned += [f"masks/{p.stem}.png" for p in unique] + [f"images/{p.name}" for p in unique]
        planned += [_part(r) for r in range(world)]
        planned += [f"previews/{p.stem}.png" for p in unique[:max(previews, 0)]]  # most likely
        if depth_dir is not None:
            planned += [f"depth/{p.stem}{x}" for p in unique for x in (".png", ".npy")
                        if (depth_dir / f"{p.stem}{x}").is_file()]
        try:
            out.claim(planned)
        except OutputError as e:  # the other ranks stop with the same line, not a hang
            if world > 1:
                dist.broadcast_object_list([{"error": str(e)}], src=0)
            raise
        (out_path / "progress").mkdir(exist_ok=True)
        atomic_write_text(out / "classes.txt", "\n".join(names) + "\n")
        done = _reusable(job, unique)
        todo = [[str(p) for p in unique if p.stem not in done]]
        previews -= sum(1 for r in done.values() if r.get("preview"))
    if world > 1:
        dist.broadcast_object_list(todo, src=0)
        if isinstance(todo[0], dict):
            raise OutputError(todo[0]["error"])
    mine = [Path(p) for p in todo[0]][rank::world]
    with open(out_path / _part(rank), "a") as log:
        for path in tqdm(mine, desc=f"pseudo-label{f' rank {rank}' if world > 1 else ''}",
                         disable=not show):
            preview = rank == 0 and previews > 0  # rank 0's first labelled images
            if preview:
                out.claim([f"previews/{path.stem}.png"])
            record = _label_image(job, ens, path, preview)
            previews -= bool(record.get("preview"))
            log.write(json.dumps(record) + "\n")
            log.flush()  # a killed run keeps what it labelled (see _reusable)
    if world > 1:
        dist.barrier()
    if rank != 0:
        return {}
    return _finish(job, ens, out, unique, skipped, other, len(unique) - len(todo[0]), settings)


# what each labelled image added (one JSON line per image): the ranks of a run append to
# their own part, the run's end merges the parts into PROGRESS; a rerun with the same
# settings reuses the records whose mask and source image are unchanged
PROGRESS = "progress/labelled.jsonl"
RECORD_FORMAT = "segcompress-pseudo-record/1"


def _part(rank: int) -> str:
    return f"progress/rank-{rank}.jsonl"


@dataclass(frozen=True)
class _Job:
    """What every image of one run is labelled with (the same on every rank)."""

    out: Path
    names: list[str]
    ignore_index: int
    thr: torch.Tensor
    cmap: torch.Tensor | None
    dtype: type
    copy_images: bool
    depth_dir: Path | None
    truth_dir: Path | None
    key: str


def _unique_stems(files: list[Path]) -> tuple[list[Path], list[dict]]:
    """The images to label (one per stem: masks are named ``<stem>.png``) and the
    skipped duplicates."""
    seen: dict[str, str] = {}
    unique, skipped = [], []
    for path in files:
        if path.stem in seen:
            skipped.append({"name": path.name, "reason": f"same stem as an earlier file "
                            f"({seen[path.stem]}): masks are named <stem>.png"})
        else:
            seen[path.stem] = path.name
            unique.append(path)
    return unique, skipped


def _stamp(path: Path) -> list[int]:
    """A source file's size and modification time: a record is reused only while the
    image it labelled is unchanged."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _file_ids(path: Path) -> list:
    """Content fingerprints of a teacher or class-map file (each file of a folder)."""
    if path.is_dir():
        return [[p.relative_to(path).as_posix(), sha256_file(p)]
                for p in sorted(path.rglob("*")) if p.is_file()]
    return [sha256_file(path)]


def _settings_key(settings: dict, ens: Ensemble, class_map, copy_images, depth_dir,
                  truth) -> str:
    """One hash of everything a mask depends on: the run's ``settings`` (not where the
    images are: each record checks its own source file), the teachers and class map by
    content, and where images, depth maps and truth come from."""
    key = {k: v for k, v in settings.items() if k not in ("images_dir", "teachers", "class_map")}
    key.update({
        "teachers": [_file_ids(Path(ck)) for ck in ens.checkpoints],
        "class_map": _file_ids(Path(class_map)) if class_map else None,
        "copy": copy_images, "depth": str(depth_dir) if depth_dir else None,
        "truth": str(truth) if truth else None,
    })
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _records(out: Path) -> dict[str, dict]:
    """The records of the merged progress file and of every rank's part (later wins);
    a line cut short by a kill is skipped."""
    found: dict[str, dict] = {}
    folder = out / "progress"
    paths = [out / PROGRESS] + sorted(folder.glob("rank-*.jsonl")) if folder.is_dir() else []
    for path in paths:
        if not path.is_file() or path.is_symlink():
            continue
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("format") == RECORD_FORMAT:
                found[str(rec.get("stem"))] = rec
    return found


def _reusable(job: _Job, unique: list[Path]) -> dict[str, dict]:
    """The records of an earlier run of the same settings whose image is unchanged and
    whose mask (and image link, depth link, preview) is still as it wrote them."""
    records, ok = _records(job.out), {}
    for path in unique:
        rec = records.get(path.stem)
        if (rec is None or rec.get("key") != job.key or rec.get("name") != path.name
                or rec.get("source") != _stamp(path) or rec.get("skipped")):
            continue
        mask = job.out / "masks" / f"{path.stem}.png"
        outputs = [job.out / "images" / path.name]
        outputs += [job.out / "depth" / rec["depth"]] if rec.get("depth") else []
        outputs += [job.out / "previews" / f"{path.stem}.png"] if rec.get("preview") else []
        if (mask.is_file() and sha256_file(mask) == rec.get("mask_sha")
                and all(o.is_file() or o.is_symlink() for o in outputs)):
            ok[path.stem] = rec
    return ok


def _sparse(conf: torch.Tensor) -> list[list[int]]:
    idx = conf.nonzero().tolist()
    return [[i, j, int(conf[i, j])] for i, j in idx]


def _label_image(job: _Job, ens: Ensemble, path: Path, preview: bool) -> dict:
    """Label one image: its mask, image link, depth link (and preview) written, and its
    counts returned as a record (see :data:`PROGRESS`)."""
    c = len(job.names)
    rec = {"format": RECORD_FORMAT, "key": job.key, "stem": path.stem, "name": path.name,
           "source": _stamp(path)}
    try:
        image = read_image(path)
    except DataError as e:
        return {**rec, "skipped": str(e)}
    members = ens.member_probs(image)
    p = _mapped(ens.probs(image, members), job.cmap)
    conf, label = p.max(0)
    keep = (conf >= job.thr[label]) & (label < c)
    mask = torch.where(keep, label, torch.full_like(label, job.ignore_index)).numpy()
    _write_png(job.out / "masks" / f"{path.stem}.png", mask.astype(job.dtype))
    _link_or_copy(path, job.out / "images" / path.name, job.copy_images)
    rec["depth"] = None
    if job.depth_dir is not None:
        found = [job.depth_dir / f"{path.stem}{x}" for x in (".png", ".npy")]
        found = [f for f in found if f.is_file()]
        if found:
            _link_or_copy(found[0], job.out / "depth" / found[0].name, job.copy_images)
            rec["depth"] = found[0].name
    lab = label.numpy()
    rec["predicted"] = np.bincount(lab[lab < c], minlength=c)[:c].tolist()
    rec["kept"] = np.bincount(mask[keep.numpy()], minlength=c)[:c].tolist()
    rec["pixels"] = int(lab.size)
    rec["truth"] = None
    gt_path = job.truth_dir / f"{path.stem}.png" if job.truth_dir is not None else None
    if gt_path is not None and gt_path.is_file():
        gt = read_mask(gt_path)
        if gt.shape == lab.shape:
            valid = (gt >= 0) & (gt < c)  # whatever the truth's ignore value is
            k = keep.numpy() & valid
            target = torch.from_numpy(np.where(valid, gt, -1))
            confusions = []
            for m_probs in members:  # each teacher on its own
                m_conf = torch.zeros(c, c, dtype=torch.int64)
                update_confusion(m_conf, _mapped(m_probs, job.cmap)[:c].argmax(0), target, -1)
                confusions.append(_sparse(m_conf))
            rec["truth"] = {"right_kept": int((mask[k] == gt[k]).sum()), "scored_kept": int(k.sum()),
                            "right_all": int((lab[valid] == gt[valid]).sum()),
                            "scored_all": int(valid.sum()), "members": confusions}
    if preview:
        _preview(job.out / "previews" / f"{path.stem}.png", image, mask, conf.numpy(), c)
        rec["preview"] = True
    rec["mask_sha"] = sha256_file(job.out / "masks" / f"{path.stem}.png")
    return rec


def _finish(job: _Job, ens: Ensemble, out: OutDir, unique: list[Path], skipped: list[dict],
            other: list[str], reused: int, settings: dict) -> dict:
    """Rank 0 after every rank is done: merge the records into stats.json and the
    progress file, list what was written, drop what an earlier run left for images no
    longer labelled (only files it wrote, unedited)."""
    c, names = len(job.names), job.names
    records = _records(job.out)
    predicted, kept = np.zeros(c, np.int64), np.zeros(c, np.int64)
    pixels = right_kept = right_all = scored_kept = scored_all = truth_images = 0
    member_conf = [torch.zeros(c, c, dtype=torch.int64) for _ in ens.models]
    written: dict[str, list[str]] = {"masks": [], "images": [], "depth": [], "previews": []}
    depth_missing, merged, skipped = [], [], list(skipped)
    for path in unique:
        rec = records.get(path.stem)
        if rec is None or rec.get("key") != job.key:
            raise RuntimeError(f"{path}: no label record after the run (a rank stopped early?)")
        merged.append(rec)
        if rec.get("skipped"):
            skipped.append({"name": path.name, "reason": rec["skipped"]})
            continue
        written["masks"].append(f"{path.stem}.png")
        written["images"].append(path.name)
        if rec["depth"]:
            written["depth"].append(rec["depth"])
        elif job.depth_dir is not None:
            depth_missing.append(path.name)
        if rec.get("preview"):
            written["previews"].append(f"{path.stem}.png")
        predicted += np.asarray(rec["predicted"], np.int64)
        kept += np.asarray(rec["kept"], np.int64)
        pixels += rec["pixels"]
        if rec["truth"] is not None:
            t = rec["truth"]
            right_kept, scored_kept = right_kept + t["right_kept"], scored_kept + t["scored_kept"]
            right_all, scored_all = right_all + t["right_all"], scored_all + t["scored_all"]
            truth_images += 1
            for m_conf, entries in zip(member_conf, t["members"]):
                for i, j, n in entries:
                    m_conf[i, j] += n
    done = len(unique) - sum(1 for r in merged if r.get("skipped"))
    atomic_write_text(job.out / PROGRESS, "".join(json.dumps(r) + "\n" for r in merged))
    ours = [f"{d}/{n}" for d, names_ in written.items() for n in names_]
    stale = [name for d in written for name in out.remove_stale(ours, under=d)]
    out.remove_stale([PROGRESS], under="progress")  # the ranks' parts, merged above
    out.record(["classes.txt", PROGRESS, *ours])
    stats = {
        **settings,
        "members": check_members(ens, member_conf, names, truth_images),
        "member_check": (f"scored on {truth_images} labelled image(s) (--truth)" if truth_images
                         else "skipped: no labelled data (--truth masks) to score the teachers on"),
        "images_done": done,
        "images_reused": reused,
        "skipped": len(skipped),
        "skipped_files": skipped,
        "other_files": other,
        "removed_stale": sorted({Path(n).stem for n in stale if not n.startswith("previews/")}),
        "depth_dir": str(job.depth_dir) if job.depth_dir is not None else None,
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
    if job.truth_dir is not None:
        stats["truth"] = {
            "dir": str(job.truth_dir),
            "accuracy_kept": right_kept / scored_kept if scored_kept else None,
            "accuracy_all": right_all / scored_all if scored_all else None,
            "labelled_pixels_scored": scored_all,
        }
    atomic_write_json(job.out / "stats.json", stats)
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
