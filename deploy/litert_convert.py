"""The LiteRT converter process: ``python -m deploy.litert_convert CHECKPOINT OUT H W
BATCH [--argmax] [--calibration FILE.npy]``, run by
:func:`deploy.backends.litert.convert_tflite` in the converter environment (litert-torch
cannot be installed beside the toolkit: ``scripts/setup_litert.sh``). It loads the
checkpoint with the toolkit's own loader (``weights_only``), traces the student at the
given batch and size and converts it with ``litert_torch.convert``; with
``--calibration`` (float32 ``[N, 3, H, W]`` in one ``.npy``, read without pickle), INT8
by PT2E with litert-torch's ``PT2EQuantizer`` (symmetric, per-channel weights, static
activations) first. Not imported by the toolkit itself."""

from __future__ import annotations

import sys

import numpy as np

from deploy.arrays import fixed_batches


def main(argv: list[str] | None = None) -> None:
    """Convert one checkpoint (the arguments as in this module's docstring)."""
    import argparse

    import litert_torch
    import torch

    from compress.models import load_model
    from deploy.export import ExportHead

    p = argparse.ArgumentParser(prog="python -m deploy.litert_convert")
    for name in ("checkpoint", "out"):
        p.add_argument(name)
    for name in ("height", "width", "batch"):
        p.add_argument(name, type=int)
    p.add_argument("--argmax", action="store_true")
    p.add_argument("--calibration")
    a = p.parse_args(argv)
    head = ExportHead(load_model(a.checkpoint), a.argmax).eval()
    x = torch.randn(a.batch, 3, a.height, a.width)
    with torch.no_grad():
        if a.calibration is None:
            edge = litert_torch.convert(head, (x,))
        else:
            from litert_torch.quantize import pt2e_quantizer
            from litert_torch.quantize.quant_config import QuantConfig
            from torchao.quantization.pt2e import quantize_pt2e

            quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
                pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
            m = quantize_pt2e.prepare_pt2e(torch.export.export(head, (x,)).module(), quantizer)
            for batch in fixed_batches(np.load(a.calibration, allow_pickle=False), a.batch):
                m(torch.from_numpy(batch))
            m = quantize_pt2e.convert_pt2e(m, fold_quantize=False)
            edge = litert_torch.convert(m, (x,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
    edge.export(a.out)


if __name__ == "__main__":
    main(sys.argv[1:])
