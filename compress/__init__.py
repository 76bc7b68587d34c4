"""compress: distil compact segmentation students from big teachers.

Public API::

    from compress import load_model
    model = load_model("artifacts/runs/.../checkpoints/best.pt")  # eval-mode nn.Module
    logits = model(images)  # [N, 3, H, W] normalised -> [N, C, H, W]
"""

from compress.config import ConfigError, RunConfig, load_config
from compress.models import create_model, load_model, make_spec, save_checkpoint

__all__ = ["ConfigError", "RunConfig", "create_model", "load_config", "load_model", "make_spec",
           "save_checkpoint"]
