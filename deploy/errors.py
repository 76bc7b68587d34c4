"""The errors deploy raises: one-line messages that name the step and the reason.

They derive from :class:`compress.errors.UserError` (and keep ``ValueError`` /
``RuntimeError`` as bases), so the CLIs print them as one line (``--debug`` for the trace).
"""

from __future__ import annotations

from compress.errors import UserError, first_line, one_line  # noqa: F401  (re-exported)

# a backend library's own error spread over many lines is cut to this many characters
MESSAGE_CHARS = 300


class DeployError(UserError, RuntimeError):
    """A deploy step failed; the message starts with the step (``export: ...``)."""


class ExportError(DeployError):
    """The PyTorch -> ONNX export, its check or its simplification failed."""


class VerificationError(DeployError):
    """An exported model disagrees with its reference beyond the allowed threshold."""


class QuantizationError(DeployError):
    """INT8 quantization failed or cannot meet the accuracy budget."""


class BackendUnavailable(DeployError):
    """A backend (TensorRT, a CUDA provider, OpenVINO device) is not installed or has no
    device here; the message says what is missing and how to install it."""


class ManifestError(UserError, ValueError):
    """A manifest that is broken, or an artifact whose sha256 does not match it."""
