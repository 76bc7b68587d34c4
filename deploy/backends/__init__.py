"""One module per backend, each owning everything about it: its :class:`Runtime`, its
converter or engine builder, its file suffixes, its precision names and
``available(device)``.

- :mod:`deploy.backends.torch`: segcompress checkpoints (``.pt``/``.pth``) in PyTorch.
- :mod:`deploy.backends.onnxruntime`: ``.onnx`` under ONNX Runtime (the ONNX export itself,
  the step every other artifact starts from, is :mod:`deploy.export`).
- :mod:`deploy.backends.openvino`: OpenVINO IR (``.xml`` + ``.bin``) and its conversion.
- :mod:`deploy.backends.tensorrt`: TensorRT engines (``.engine``/``.plan``), the builder.
- :mod:`deploy.backends.aoti`: AOTInductor packages (``.pt2``), compiled from the PyTorch
  model by ``torch.export`` + Inductor.

:mod:`deploy.backends.base` holds what they share (the ``Runtime`` base, the ``Backend``
description, the precision vocabulary); :mod:`deploy.runtime` is the registry callers
ask (``backend_for_path``, ``get_backend``, ``backends``, ``load_runtime``). The modules
import their heavy package inside the functions that need it.
"""
