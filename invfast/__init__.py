"""invfast: fused geometric augmentation and consistency losses for invariance training."""

__version__ = "0.1.0"

from . import geometry, losses, nn, reference
from ._ops import backend_info, set_backend
from .augment import RandomAffine
from .functional import affine_warp, warp_normalize

__all__ = [
    "RandomAffine",
    "affine_warp",
    "backend_info",
    "geometry",
    "losses",
    "nn",
    "reference",
    "set_backend",
    "warp_normalize",
]
