"""NVIDIA ModelOpt's ONNX INT8 PTQ vs our TensorRT INT8 graph (NNCF `performance` + signed
symmetric rewrite), on the same f32 ONNX and the same calibration frames: the measurement
behind the choice in docs/deploy.md. Not part of the toolkit (ModelOpt's ONNX extra pins
onnxruntime-gpu and a CUDA torch, so it lives in its own venv):

    # 1. calibration frames as the export picks them (the toolkit's venv)
    .venv/bin/python scripts/modelopt_compare.py calib EXPORT_DIR --data ../shared/data/camvid
    # 2. quantize with ModelOpt (a venv with `pip install 'nvidia-modelopt[onnx]'`)
    /tmp/movenv/bin/python scripts/modelopt_compare.py quantize EXPORT_DIR --method entropy
    # 3. score it like any artifact (the toolkit's venv)
    .venv/bin/compress eval EXPORT_DIR-modelopt_entropy.onnx --data ../shared/data/camvid

EXPORT_DIR is a `compress export --int8 --target tensorrt` dir (its model.onnx is quantized;
its model_int8.onnx is ours). Outputs go beside the dir (never into it, never over a file).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def calib(export_dir: Path, data: Path, count: int = 300, seed: int = 0) -> Path:
    """The export's calibration frames (train split, the same seeded subset) as .npy."""
    import json

    from compress.data import split_images
    from compress.spec import ModelSpec

    manifest = export_dir / "manifest.json"
    spec = ModelSpec.from_dict(json.loads(manifest.read_text())["spec"], manifest)
    size = tuple(spec.input_size)
    ds = split_images("camvid", str(data), "train", size=size, mean=spec.mean,
                      std=spec.std, ignore_index=spec.ignore_index)
    n = min(count, len(ds))
    idx = (range(n) if n == len(ds) else
           sorted(np.random.default_rng(seed).choice(len(ds), n, replace=False).tolist()))
    arr = np.stack([ds[i]["image"].numpy() for i in idx]).astype(np.float32)
    out = export_dir.parent / f"{export_dir.name}-calib.npy"
    if out.exists():
        raise SystemExit(f"{out} exists")
    np.save(out, arr)
    print(f"calibration: {arr.shape} -> {out}")
    return out


def quantize(export_dir: Path, method: str) -> Path:
    """ModelOpt INT8 PTQ on the CPU; float layers kept f32 (ORT on the CPU runs no fp16);
    the toolkit's spec metadata copied over so `compress eval` reads it."""
    import onnx
    from modelopt.onnx.quantization import quantize as mo_quantize

    src = export_dir / "model.onnx"
    out = export_dir.parent / f"{export_dir.name}-modelopt_{method}.onnx"
    if out.exists():
        raise SystemExit(f"{out} exists")
    data = np.load(export_dir.parent / f"{export_dir.name}-calib.npy")
    mo_quantize(str(src), quantize_mode="int8", calibration_data=data,
                calibration_method=method, calibration_eps=["cpu"],
                high_precision_dtype="fp32", output_path=str(out))
    model, ref = onnx.load(str(out)), onnx.load(str(src))
    del model.metadata_props[:]
    model.metadata_props.extend(ref.metadata_props)
    onnx.save(model, str(out))
    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    print(f"{out}: {len(q)} QuantizeLinear nodes")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=["calib", "quantize"])
    ap.add_argument("export_dir", type=Path)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--method", default="entropy", choices=["entropy", "max"])
    a = ap.parse_args()
    if a.step == "calib":
        calib(a.export_dir, a.data)
    else:
        quantize(a.export_dir, a.method)


if __name__ == "__main__":
    main()
