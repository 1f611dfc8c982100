"""The kernel warm-up: it runs every leaf of a model on a private copy and changes nothing in the model."""
import numpy as np
import pytest

from hpcnn.backend import open_device, to_host
from hpcnn.nn import models
from hpcnn.nn.warmup import warm_up


def _state(model):
    """Every array the model holds: parameters, gradients and buffers such as running statistics."""
    out = {}
    for name, m in model.named_modules():
        for key, value in vars(m).items():
            if hasattr(value, "shape") and hasattr(value, "dtype"):
                out[f"{name}.{key}"] = np.array(to_host(value))
        for key in m.params:
            out[f"{name}.params.{key}"] = np.array(to_host(m.params[key]))
            out[f"{name}.grads.{key}"] = np.array(to_host(m.grads[key]))
    return out


@pytest.mark.parametrize("name, shape", [("unet2d", (1, 32, 32)), ("resnet18", (3, 32, 32)),
                                         ("cosmoflow", (4, 32, 32, 32)), ("lenet", (1, 8, 8))])
def test_warm_up_runs_every_leaf_and_leaves_the_model_as_it_was(name, shape):
    model = models.build_for_input(name, shape)
    before = _state(model)
    warmed = warm_up(model, len(shape) - 1, np.float32)
    leaves = list(model.named_leaves())
    assert warmed == len(leaves), f"{warmed} of {len(leaves)} leaves warmed"
    after = _state(model)
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(before[key], after[key], err_msg=key)


def test_warm_up_on_the_emulated_device_moves_its_inputs_there():
    dev = open_device("emulated-gpu")
    model = models.build_for_input("unet2d", (1, 32, 32)).to(dev)
    assert warm_up(model, 2, np.float32, dev.put) == len(list(model.named_leaves()))
