"""Nearest-neighbour upsampling against torch.nn.functional.interpolate(mode='nearest')."""
import numpy as np
import pytest
import torch.nn.functional as F

from hpcnn import kernels as K
from tests.oracle import check_against_torch, seeded

# (input shape, scale): 2-D and 3-D, one factor or one per axis.
CASES = [((2, 3, 5, 7), 2), ((1, 2, 3, 4), (2, 3)), ((2, 2, 3, 4, 5), 2), ((1, 3, 2, 3, 3), (1, 2, 3)),
         ((1, 1, 1, 1), 3)]


def _case_id(value):
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)


@pytest.mark.parametrize("shape,scale", CASES, ids=_case_id)
def test_upsample_nearest_matches_torch(shape, scale, dtype):
    nd = len(shape) - 2
    x = seeded(0).standard_normal(shape).astype(dtype)
    factor = (scale,) * nd if isinstance(scale, int) else scale
    y, dx = check_against_torch(lambda a: K.upsample_nearest_forward(a, scale),
                                lambda dy: K.upsample_nearest_backward(dy, scale),
                                lambda t: F.interpolate(t, scale_factor=tuple(map(float, factor)), mode="nearest"),
                                [x], dtype, f"upsample{nd}d")
    assert y.dtype == dtype and dx.dtype == dtype


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"\(1, 2, 5, 6\)"):
        K.upsample_nearest_backward(np.zeros((1, 2, 5, 6)), 2)
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        K.upsample_nearest_forward(np.zeros((2, 3)), 2)
    with pytest.raises(ValueError, match="scale"):
        K.upsample_nearest_forward(np.zeros((1, 1, 2, 2)), (2, 2, 2))
