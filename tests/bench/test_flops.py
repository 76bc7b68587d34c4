"""Parameter and MAC counts against hand-computed values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.flops import count_flops, count_params, size_on_disk


class Hand(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)  # 8*3*9 + 8 = 224
        self.bn = nn.BatchNorm2d(8)  # 16 (running stats are buffers)
        self.head = nn.Conv2d(8, 2, 1, bias=False)  # 16
        self.head.weight.requires_grad_(False)

    def forward(self, x):
        return self.head(self.bn(self.conv(x)))


def test_param_counts_hand_built_model():
    assert count_params(Hand()) == {"total": 224 + 16 + 16, "trainable": 224 + 16}


def test_shared_parameters_counted_once():
    lin = nn.Linear(4, 4)
    assert count_params(nn.Sequential(lin, lin))["total"] == 20


def test_single_conv_macs():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    r = count_flops(conv, (16, 16))
    assert r.macs == r.dense_macs == 8 * 16 * 16 * 3 * 3 * 3  # Cout*H*W*Cin*k*k = 55296
    assert r.by_operator == {"conv": 55296}
    assert r.uncounted == {}


def test_grouped_strided_conv_macs():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1, bias=False),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False),
    )
    # 1x1: 8*16*16*3; depthwise stride 2: 8 outputs of 8x8, each 1 input channel * 3*3
    assert count_flops(model, (16, 16)).macs == 8 * 16 * 16 * 3 + 8 * 8 * 8 * 1 * 9


class Up(nn.Module):
    def __init__(self, mode):
        super().__init__()
        self.mode = mode

    def forward(self, x):
        x = x[:, :2, :4, :4]  # [1, 2, 4, 4]: slicing counts nothing
        kw = {} if self.mode == "nearest" else {"align_corners": False}
        return F.interpolate(x, scale_factor=2, mode=self.mode, **kw)


@pytest.mark.parametrize("mode, per_output", [("nearest", 1), ("bilinear", 4), ("bicubic", 16)])
def test_upsample_macs(mode, per_output):
    r = count_flops(Up(mode), (4, 4))
    assert r.macs == per_output * 2 * 8 * 8
    assert r.uncounted == {}


class Ops(nn.Module):
    def forward(self, x):  # x: [1, 3, 4, 4] = 48 elements
        y = torch.relu(x) + x  # 48 + 48
        return y.softmax(1)  # 3 per element: 144


def test_ops_fvcore_skips_are_counted():
    r = count_flops(Ops(), (4, 4))
    assert r.macs == 48 + 48 + 144
    assert r.dense_macs == 0
    assert r.uncounted == {}


def test_unknown_op_is_reported_uncounted():
    class Odd(nn.Module):
        def forward(self, x):
            return torch.special.i0(x)

    r = count_flops(Odd(), (4, 4))
    assert r.macs == 0 and list(r.uncounted) == ["aten::i0"]


def test_breakdown_adds_up(checkpoints):
    from compress.models import load_model

    model = load_model(checkpoints[1])
    r = count_flops(model, (64, 64))
    top = [row for row in r.breakdown if row["level"] == 0]
    assert [row["module"] for row in top] == ["encoder", "decoder", "segmentation_head"]
    assert sum(row["macs"] for row in top) == r.macs
    for part in ("encoder", "decoder"):
        inner = [row for row in r.breakdown if row["level"] == 1 and row["part"] == part]
        total = next(row["macs"] for row in top if row["module"] == part)
        assert len(inner) > 1 and sum(row["macs"] for row in inner) == total
    strides = [
        row["module"].split(" (")[0]
        for row in r.breakdown
        if row["part"] == "encoder" and row["level"] == 1
    ]
    assert strides == ["stride 2", "stride 4", "stride 8", "stride 16", "stride 32"]
    assert sum(row["params"] for row in top) == r.params["total"]
    assert r.uncounted == {}


def test_size_on_disk_counts_companions(tmp_path):
    xml = tmp_path / "m.xml"
    xml.write_bytes(b"x" * 10)
    (tmp_path / "m.bin").write_bytes(b"x" * 90)
    assert size_on_disk(xml) == 100
    with pytest.raises(FileNotFoundError):
        size_on_disk(tmp_path / "missing.onnx")
