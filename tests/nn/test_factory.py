"""Own networks from "FILE.py:FUNCTION": loading, options, seeding, and every refusal naming the file and function."""
import textwrap

import numpy as np
import pytest

from hpcnn import nn
from hpcnn.nn.factory import FactoryError, load_factory

NET = textwrap.dedent("""
    from hpcnn import nn

    def build(in_channels, num_classes=2, width=4):
        return nn.Sequential(("conv", nn.Conv2d(in_channels, width, 3, padding=1)), ("relu", nn.ReLU()),
                             ("head", nn.Conv2d(width, num_classes, 1)))

    def seeded(in_channels, seed, dtype=None):
        return nn.Sequential(("conv", nn.Conv2d(in_channels, 2, 3, rng=__import__("numpy").random.default_rng(seed),
                                                dtype=dtype)))

    def not_a_module(in_channels):
        return [1, 2]

    class Custom(nn.Module):
        pass

    def unregistered(in_channels):
        return nn.Sequential(("odd", Custom()))

    def complains(in_channels, width=1):
        raise ValueError("width must be even")
""")


@pytest.fixture
def netfile(tmp_path):
    (tmp_path / "nets").mkdir()
    path = tmp_path / "nets" / "mine.py"
    path.write_text(NET)
    return tmp_path


def test_loads_relative_to_a_folder_and_builds_with_options(netfile):
    f = load_factory("nets/mine.py:build", str(netfile))
    assert f.label == "mine.py:build"
    assert list(f.options()) == ["in_channels", "num_classes", "width"]
    model = f.build(in_channels=3, width=5, seed=7, dtype=np.float64)
    shapes = {name: p.shape for name, p, _ in model.parameters()}
    assert shapes == {"conv.weight": (5, 3, 3, 3), "conv.bias": (5,), "head.weight": (2, 5, 1, 1), "head.bias": (2,)}
    assert all(p.dtype == np.float64 for _, p, _ in model.parameters())
    # the same seed gives the same weights (hpcnn.nn's default generator is seeded before the call)
    again = f.build(in_channels=3, width=5, seed=7)
    other = f.build(in_channels=3, width=5, seed=8)
    w = model[0].params["weight"]
    np.testing.assert_allclose(again[0].params["weight"], w, rtol=1e-6)
    assert not np.allclose(other[0].params["weight"], w)
    # seed and dtype reach a function that takes them
    s = load_factory("nets/mine.py:seeded", str(netfile)).build(in_channels=1, seed=3, dtype=np.float64)
    ref = nn.Conv2d(1, 2, 3, rng=np.random.default_rng(3), dtype=np.float64)
    np.testing.assert_array_equal(s[0].params["weight"], ref.params["weight"])


@pytest.mark.parametrize("spec,call,message", [
    ("nets/mine.py", None, 'expected "FILE.py:FUNCTION"'),
    ("nets/missing.py:build", None, "missing.py does not exist"),
    ("nets/mine.txt:build", None, "is not a Python file"),
    ("nets/mine.py:nope", None, "defines no function 'nope' (functions: build, complains, not_a_module, seeded, "
                                "unregistered)"),
    ("nets/mine.py:build", dict(depth=2), "depth is not an argument of mine.py:build (arguments: in_channels, "
                                          "num_classes, width)"),
    ("nets/mine.py:build", dict(), "mine.py:build needs in_channels"),
    ("nets/mine.py:not_a_module", dict(in_channels=1), "returned list, not an hpcnn.nn module"),
    ("nets/mine.py:unregistered", dict(in_channels=1), "layer odd: no layer kind is registered for Custom"),
    ("nets/mine.py:complains", dict(in_channels=1), "raised ValueError: width must be even"),
])
def test_refusals_name_the_factory(netfile, spec, call, message):
    with pytest.raises(FactoryError) as err:
        f = load_factory(spec, str(netfile))
        f.build(**call)
    assert message in str(err.value), str(err.value)
