"""Plain-PyTorch versions of every invfast op.

They are the test oracle, the benchmark baseline, and the fallback when the
compiled kernels are missing or an input is outside what they support. They
follow the same conventions (see ``invfast.affine_warp``) and are written for
clarity, not speed.
"""

from . import augment as augment
from . import losses as losses
from .augment import counter_uniform, random_affine_matrices
from .warp import affine_warp, warp_normalize

__all__ = ["affine_warp", "counter_uniform", "random_affine_matrices", "warp_normalize"]
