"""Loss functions, one family per module; each is a plain function or nn.Module on tensors."""

from .locate import concentration_loss, prototype_distillation_loss
from .selective import pixel_contrast_loss, prototype_contrast_loss, weighted_prototypes

__all__ = [
    "concentration_loss",
    "prototype_distillation_loss",
    "pixel_contrast_loss",
    "prototype_contrast_loss",
    "weighted_prototypes",
]
