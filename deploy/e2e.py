"""The frame-to-map graph (``compress export --e2e HxW``): camera frame in, class map out.

:func:`frame_graph` wraps an exported model (``model.onnx`` or its INT8 form) in the
steps the Python pipeline runs around it, as ONNX operators, so one file holds everything
a device runs:

    frames uint8 [N, H, W, 3] RGB (the camera's size)
      -> float, NCHW -> bilinear resize to the model's h x w (half-pixel centres, as
         ``F.interpolate(..., align_corners=False)``), rounded to whole pixel values
      -> (pixel / 255 - mean) / std -> the model -> argmax over classes (logit > 0 for a
         binary model) -> nearest resize back to H x W (:func:`deploy.arrays.nearest_indices`)
      -> classes uint8 [N, H, W]

ONNX operators (not OpenVINO's PrePostProcessor) so that one graph runs in ONNX Runtime
and converts to OpenVINO like the model itself; every step is the one
:func:`python_pipeline` runs in NumPy/PyTorch (:func:`compress.data.resize_pair`,
:func:`compress.data.normalize`, :func:`deploy.arrays.class_ids`,
:func:`deploy.arrays.resize_ids`), which is what each artifact is verified against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from compress.errors import InputError
from compress.spec import MAX_SIDE, ModelSpec

PREFIX = "e2e/"
INPUT_NAME = "frames"
MAX_CLASSES = 256  # class ids travel as uint8


def parse_frame_size(text: str) -> tuple[int, int]:
    """``"360x480"`` -> ``(360, 480)``; any positive size up to ``MAX_SIDE`` (a camera's
    size need not be a multiple of 32: only the model's is).

    Raises:
        InputError: not ``HxW`` with two integers in range.
    """
    parts = str(text).lower().split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise InputError(f"export: --e2e {text!r}: expected HxW, e.g. 360x480 (the camera "
                         "frame's height x width)") from None
    check_frame_size((h, w))
    return h, w


def check_frame_size(size: tuple[int, int]) -> None:
    """Refuse a frame size that is not two integers in 1..``MAX_SIDE``."""
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or not
                             0 < s <= MAX_SIDE for s in size):
        raise InputError(f"export: --e2e {size}: the frame size must be two integers in "
                         f"1..{MAX_SIDE} (H x W)")


def frame_spec(spec: ModelSpec, frame_size: tuple[int, int]) -> ModelSpec:
    """The spec of the frame-to-map graph of an exported model's ``spec``."""
    return replace(spec, output="argmax", frame_size=[int(frame_size[0]), int(frame_size[1])])


def refusal(spec: ModelSpec) -> str | None:
    """Why a model cannot get a frame-to-map graph (one line), or None."""
    if spec.tasks:
        return ("--e2e: a multi-task model has more than one output map; export it without "
                "--e2e")
    if spec.classes > MAX_CLASSES:
        return f"--e2e: class ids travel as uint8: at most {MAX_CLASSES} classes, not {spec.classes}"
    return None


def frame_graph(model, spec: ModelSpec, frame_size: tuple[int, int]):
    """The frame-to-map graph around ``model`` (an ``onnx.ModelProto`` with input
    ``images`` float32 ``[N, 3, h, w]`` and one output: logits ``[N, C, h, w]`` or class
    ids ``[N, h, w]``); ``spec`` is the exported model's (``input_size`` = h x w). The
    model's nodes and weights are used as they are (an INT8 graph stays INT8). Returns a
    new ``ModelProto``, checked, with the frame spec in its metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from deploy.arrays import nearest_indices
    from deploy.metadata import set_spec_metadata

    if len(model.graph.input) != 1 or len(model.graph.output) != 1:
        raise InputError("export: --e2e needs a model with one input and one output")
    (h, w), (H, W) = spec.input_size, frame_size
    src_in, src_out = model.graph.input[0], model.graph.output[0]
    batch = src_in.type.tensor_type.shape.dim[0]
    batch_dim = batch.dim_param or batch.dim_value
    out_rank = len(src_out.type.tensor_type.shape.dim)

    g = onnx.GraphProto()
    g.CopyFrom(model.graph)
    model_out = f"{PREFIX}model_out"
    model_nodes = []
    for n in model.graph.node:  # the model's own output becomes an inner tensor
        copy = onnx.NodeProto()
        copy.CopyFrom(n)
        copy.output[:] = [model_out if o == src_out.name else o for o in copy.output]
        model_nodes.append(copy)
    pre_out = src_in.name  # the pre-processing writes the model's input tensor

    def const(name: str, array: np.ndarray) -> str:
        g.initializer.append(numpy_helper.from_array(np.asarray(array), PREFIX + name))
        return PREFIX + name

    def node(op: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        out = out or f"{PREFIX}{op.lower()}_{len(pre) + len(post)}"
        (pre if building_pre else post).append(
            helper.make_node(op, inputs, [out], name=f"{PREFIX}{out.rsplit('/', 1)[-1]}", **attrs))
        return out

    pre: list = []
    post: list = []
    building_pre = True
    x = node("Cast", [INPUT_NAME], to=TensorProto.FLOAT)
    x = node("Transpose", [x], perm=[0, 3, 1, 2])
    if (H, W) != (h, w):
        nc = node("Slice", [node("Shape", [x]), const("zero", np.array([0], np.int64)),
                            const("two", np.array([2], np.int64))])
        sizes = node("Concat", [nc, const("model_hw", np.array([h, w], np.int64))], axis=0)
        x = node("Resize", [x, "", "", sizes], mode="linear",
                 coordinate_transformation_mode="pytorch_half_pixel")
        x = node("Round", [x])  # the Python pipeline rounds to whole pixel values
    mean = np.asarray(spec.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(1, 3, 1, 1)
    x = node("Div", [x, const("255", np.array(255.0, np.float32))])
    x = node("Sub", [x, const("mean", mean)])
    node("Div", [x, const("std", std)], out=pre_out)

    building_pre = False
    y = model_out
    if out_rank == 4 and spec.classes == 1:  # binary: the class is logit > 0
        y = node("Greater", [node("Squeeze", [y, const("axis1", np.array([1], np.int64))]),
                             const("zero_f", np.array(0.0, np.float32))])
    elif out_rank == 4:
        y = node("ArgMax", [y], axis=1, keepdims=0)
    y = node("Cast", [y], to=TensorProto.UINT8)
    if (H, W) != (h, w):
        y = node("Gather", [y, const("rows", nearest_indices(h, H))], axis=1)
        y = node("Gather", [y, const("cols", nearest_indices(w, W))], axis=2)
    node("Identity", [y], out="classes")

    del g.node[:]
    g.node.extend(pre + model_nodes + post)
    del g.input[:]
    g.input.append(helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8,
                                                 [batch_dim, H, W, 3]))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("classes", TensorProto.UINT8,
                                                  [batch_dim, H, W]))
    g.name = f"{model.graph.name}_frame_to_map"
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.CopyFrom(g)
    set_spec_metadata(out, frame_spec(spec, frame_size))
    onnx.checker.check_model(out)
    return out


def write_frame_graph(model_path: Path, out_path: Path, spec: ModelSpec,
                      frame_size: tuple[int, int]) -> Path:
    """:func:`frame_graph` of the ONNX file ``model_path``, saved to ``out_path``."""
    import onnx

    onnx.save(frame_graph(onnx.load(str(model_path)), spec, frame_size), str(out_path))
    return out_path


# ---------------------------------------------------------------- the Python pipeline


def python_pipeline(predict: Callable[[np.ndarray], np.ndarray], spec: ModelSpec,
                    frame_size: tuple[int, int]) -> Callable[[np.ndarray], np.ndarray]:
    """``frames uint8 [N, H, W, 3] -> class ids int64 [N, H, W]`` the way the toolkit runs a
    model-only artifact (``predict``: normalised float32 ``[N, 3, h, w]`` -> logits or ids):
    resize, normalise, predict, class ids, nearest resize back. What a frame-to-map graph
    is verified against."""
    from compress.data import normalize, resize_pair
    from deploy.arrays import class_ids, resize_ids

    size = tuple(spec.input_size)

    def run(frames: np.ndarray) -> np.ndarray:
        x = np.stack([normalize(resize_pair(f, None, size)[0], spec.mean, spec.std)
                      for f in frames])
        return resize_ids(class_ids(predict(x)), tuple(frame_size))

    return run


class FrameSet:
    """The verification images as a camera gives them: raw frames of a split (the
    dataset's ``source.load``) at the frame size (resized bilinearly, masks nearest, when
    the source is another size), in batches ``(frames uint8 [B, H, W, 3], masks int64
    [B, H, W] | None)``."""

    def __init__(self, dataset, indices: list[int], labelled: bool, frame_size: tuple[int, int],
                 batch_size: int = 4) -> None:
        self.source = getattr(dataset, "source", None)
        if self.source is None:
            raise InputError("export: --e2e verifies on a dataset's raw frames; this image "
                             "set has none")
        self.indices, self.labelled, self.size = indices, labelled, tuple(frame_size)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.indices)

    def frame(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        from compress.data import resize_pair

        image, mask, _ = self.source.load(i)
        if not self.labelled:
            mask = None
        return resize_pair(image, mask, self.size)

    def source_size(self) -> tuple[int, int]:
        return tuple(self.source.load(self.indices[0])[0].shape[:2])

    def batches(self, desc: str | None = None) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        from tqdm import tqdm

        starts = range(0, len(self.indices), self.batch_size)
        if desc is not None:
            starts = tqdm(starts, desc=desc, leave=False, disable=None)
        for start in starts:
            pairs = [self.frame(i) for i in self.indices[start:start + self.batch_size]]
            frames = np.stack([p[0] for p in pairs])
            masks = np.stack([p[1] for p in pairs]) if self.labelled else None
            yield frames, masks
