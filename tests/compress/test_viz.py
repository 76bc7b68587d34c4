"""The epoch figures say what their colours mean: a legend of the class colours under the
segmentation grid, a colour bar in the depth unit beside each depth row."""

from __future__ import annotations

from dataclasses import replace

import matplotlib.pyplot as plt
import numpy as np
import torch

from compress.data import split_images
from compress.models import create_model
from compress.viz import depth_visual, epoch_visual, palette, save_epoch_visual
from tests.conftest import tiny_spec

DEPTH = [{"name": "depth", "kind": "depth", "unit": "mm", "min_depth": 1.0,
          "max_depth": 30.0, "channels": 8}]


def _data(spec, depth="none"):
    return split_images("synthetic", None, "val", size=(64, 64), mean=spec.mean,
                        std=spec.std, ignore_index=spec.ignore_index, count=4, depth=depth)


def test_segmentation_grid_has_a_legend_of_the_class_colours(tmp_path):
    spec = tiny_spec(synthetic_names=True)
    torch.manual_seed(0)
    model = create_model(spec)
    fig, _, cols = epoch_visual(model, None, _data(spec), spec, "cpu", n=2)
    (legend,) = fig.legends
    names = [t.get_text() for t in legend.get_texts()]
    assert names == [*spec.class_names, "ignored"] and cols[0] == "input"
    first = legend.get_patches()[1].get_facecolor()[:3]
    assert np.allclose(first, palette(spec.classes)[1] / 255.0)  # the colour the masks use
    plt.close(fig)
    assert save_epoch_visual(tmp_path / "e.png", model, None, _data(spec), spec, "cpu",
                             n=2).stat().st_size > 0


def test_binary_legend_names_background_and_the_class():
    spec = tiny_spec(classes=1, class_names=["lesion"])
    model = create_model(spec)
    data = split_images("synthetic", None, "val", size=(64, 64), mean=spec.mean,
                        std=spec.std, ignore_index=spec.ignore_index, count=2)
    fig, _, _ = epoch_visual(model, None, data, spec, "cpu", n=1)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["background", "lesion",
                                                                   "ignored"]
    plt.close(fig)


def test_depth_rows_have_a_colour_bar_in_the_tasks_unit():
    spec = replace(tiny_spec(synthetic_names=True), tasks=DEPTH)
    torch.manual_seed(0)
    model = create_model(spec).eval()
    fig, axes, _ = depth_visual(model, _data(spec, "dense"), spec, "cpu", n=2)
    bars = [ax for ax in fig.axes if ax not in set(axes.ravel())]
    assert len(bars) == 2  # one per row
    assert all(b.get_ylabel() == "depth, |error| (mm)" for b in bars)
    plt.close(fig)
