"""Layer calls in context: the random networks, the fit of their terms, and the terms' pricing."""
import numpy as np
import pytest

from hpcnn.calibrate.context import (MIN_SAMPLES, LayerSample, concurrency_in_context, context_section,
                                    fit_layer_calls, measure_layers_in_context, synthetic_network)
from perfmodel.costs import layer_cost, layer_point
from perfmodel.layers import iter_layers, walk
from perfmodel.machine import MachineProfile
from tests.devices import device, device_params


def test_random_networks_are_seeded_valid_and_varied():
    kinds, dims = set(), set()
    for seed in range(40):
        model, shape = synthetic_network(np.random.default_rng(seed))
        again, shape2 = synthetic_network(np.random.default_rng(seed))
        chain = walk(model, shape)                         # every layer accepts its input
        described = [(spec.kind, spec.in_shape, spec.out_shape, spec.geometry) for spec in iter_layers(chain)]
        assert shape == shape2 and described == [(spec.kind, spec.in_shape, spec.out_shape, spec.geometry)
                                                 for spec in iter_layers(walk(again, shape2))]
        kinds |= {spec.kind for spec in iter_layers(chain)}
        dims.add(len(shape) - 2)
        small, small_shape = synthetic_network(np.random.default_rng(seed), scale=0.3)
        assert np.prod(small_shape[2:]) <= np.prod(shape[2:])
        walk(small, small_shape)
    assert dims == {2, 3}
    assert {"conv", "batchnorm", "relu", "leaky_relu", "maxpool", "avgpool", "upsample", "global_avgpool",
            "linear"} <= kinds


def _sample(kind, nbytes, kernel, measured, grid=(1, 1, 1), alone=None, together=None):
    from hpcnn import nn
    spec = list(iter_layers(walk(nn.Sequential(nn.Conv2d(4, 8, 3, padding=1)), (2, 4, 16, 16))))[0]
    return LayerSample(kind, nbytes, kernel, measured, spec, grid, alone, together)


def test_the_fit_recovers_known_terms_and_skips_rare_kinds():
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(40):
        kernel = (rng.uniform(1e-5, 1e-2), rng.uniform(1e-5, 2e-2))
        nbytes = float(rng.uniform(1e3, 1e8))
        measured = tuple(k + f + b * nbytes for k, f, b in zip(kernel, (2e-4, 1e-4), (1e-11, 3e-11)))
        samples.append(_sample("conv", nbytes, kernel, measured))
    # a descheduled call, ten times slower, is left out
    samples.append(_sample("conv", 1e6, (1e-3, 1e-3), (1e-2, 1e-2)))
    # layers timed on two ranks take no part in the fit
    samples += [_sample("conv", 1e6, (1e-3, 1e-3), (5e-3, 5e-3), grid=(1, 2, 1))] * 10
    samples += [_sample("linear", 1e4, (1e-5, 1e-5), (1e-4, 1e-4))] * (MIN_SAMPLES - 1)
    kinds = fit_layer_calls(samples, "measured")
    assert set(kinds) == {"conv"}
    fwd, bwd = kinds["conv"]["forward"], kinds["conv"]["backward"]
    assert fwd["fixed"]["value"] == pytest.approx(2e-4, rel=1e-3) and bwd["fixed"]["value"] == pytest.approx(1e-4, rel=1e-3)
    assert fwd["per_byte"]["value"] == pytest.approx(1e-11, rel=1e-3)
    assert bwd["per_byte"]["value"] == pytest.approx(3e-11, rel=1e-3)
    assert fwd["fit"]["rejected"] == 1 and fwd["fit"]["median_abs_relative"] < 1e-6
    assert all(t["source"] == "measured" for d in (fwd, bwd) for t in d.values())


def test_the_slowest_rank_sets_the_concurrency_of_each_operation():
    samples = [_sample("conv", 1e6, (1e-3, 2e-3), (1e-3, 2e-3), alone=(1e-3, 2e-3),
                       together=((1.1e-3, 2.2e-3), (1.3e-3, 2.4e-3))) for _ in range(MIN_SAMPLES)]
    samples += [_sample("relu", 1e6, (1e-4, 1e-4), (1e-4, 1e-4), alone=(1e-4, 1e-4),
                        together=((1e-4, 1e-4), (1e-4, 1e-4)))] * (MIN_SAMPLES - 1)
    slowdown = concurrency_in_context(samples)
    assert set(slowdown) == {"conv_forward", "conv_backward_data", "conv_backward_filter"}
    assert slowdown["conv_forward"] == pytest.approx(1.3) and slowdown["conv_backward_data"] == pytest.approx(1.2)
    assert concurrency_in_context([_sample("conv", 1e6, (1e-3, 1e-3), (1e-3, 1e-3))] * 10) == {}


def test_a_layer_near_measured_ones_takes_their_ratio_and_a_far_one_its_model():
    from hpcnn import nn
    m = MachineProfile.synthetic(per_flop=1e-10, per_byte=1e-9, alpha=1e-6, beta=1e-9)
    chain = walk(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()), (2, 8, 64, 64))
    conv, relu = list(iter_layers(chain))
    grid = (1, 1, 1)
    base = layer_cost(conv, grid, m)
    samples = [LayerSample("conv", 1.0, (0.0, 0.0), (1.5 * base.forward, 0.5 * base.backward), conv, grid)] * 3
    doc = m.doc
    doc["sources"]["measured"] = "stated by the test"
    doc["layers_in_context"] = context_section(samples, m, "measured")
    corrected = MachineProfile(doc)           # validates: every number has its source
    assert layer_cost(conv, grid, corrected).forward == pytest.approx(1.5 * base.forward, rel=1e-3)
    assert layer_cost(conv, grid, corrected).backward == pytest.approx(0.5 * base.backward, rel=1e-3)
    assert layer_cost(relu, grid, corrected).forward == pytest.approx(layer_cost(relu, grid, m).forward)
    # far away (a 3-D block on 64 ranks) the correction has died out
    far = list(iter_layers(walk(nn.Sequential(nn.Conv3d(8, 16, 3, padding=1)), (2, 8, 64, 64, 64))))[0]
    g3 = (1, 4, 4, 4)
    assert corrected.context.factors("conv", layer_point(far, g3), (1e-3, 1e-3)) == pytest.approx((1.0, 1.0), abs=1e-3)
    # halo and collective times are corrected with the compute: the ratios were measured on their sum
    split = (1, 2, 1)
    samples = [LayerSample("conv", 1.0, (0.0, 0.0), tuple(2.0 * t for t in c.directions()), conv, split)
               for c in [layer_cost(conv, split, m)]]
    doc["layers_in_context"] = context_section(samples, m, "measured")
    c2 = layer_cost(conv, split, MachineProfile(doc))
    c1 = layer_cost(conv, split, m)
    assert c2.halo_forward == pytest.approx(2 * c1.halo_forward, rel=1e-3) and c1.halo_forward > 0


@pytest.mark.parametrize("name", device_params())
def test_layers_in_context_are_timed_on_one_rank(name):
    """On every device: the strict stand-in refuses any numpy call a device array reaches."""
    from hpcnn.parallel.mpi import Communicator
    m = MachineProfile.synthetic(per_flop=1e-10, per_byte=1e-9, alpha=1e-6, beta=1e-9)
    samples = measure_layers_in_context(Communicator.local(), m, device(name), np.random.default_rng(3),
                                        budget=0.5, reps=1, targets=(0.002, 0.01))
    assert samples and "conv" in {s.kind for s in samples}
    for s in samples:
        assert s.nbytes > 0 and all(k >= 0 for k in s.kernel) and all(t > 0 for t in s.measured)
        assert s.grid == (1,) * (len(s.spec.in_shape) - 1) or len(s.spec.in_shape) == 2
        assert s.together is None and all(t > 0 for t in s.alone)


def test_a_kind_takes_its_one_rank_factor_and_its_grid_s_extra_seconds_everywhere():
    """Enough rows: every one-rank layer measured 1.5 times its prediction, every one on two ranks (split along H)
    1.5 times plus 1 ms a call; a layer far from all of them takes those terms, and a 4-rank grid the
    2-rank ones."""
    from hpcnn import nn
    m = MachineProfile.synthetic(per_flop=1e-10, per_byte=1e-9, alpha=1e-6, beta=1e-9)
    samples = []
    for c in range(4, 16):
        spec = list(iter_layers(walk(nn.Sequential(nn.Conv2d(c, 2 * c, 3, padding=1)), (2, c, 32, 32))))[0]
        for grid, extra in (((1, 1, 1), 0.0), ((1, 2, 1), 1e-3)):
            samples.append(LayerSample("conv", 1.0, (0.0, 0.0), tuple(1.5 * t + extra for t in
                                                                       layer_cost(spec, grid, m).directions()),
                                       spec, grid))
    doc = m.doc
    doc["sources"]["measured"] = "stated by the test"
    doc["layers_in_context"] = context_section(samples, m, "measured")
    corrected = MachineProfile(doc)
    far = list(iter_layers(walk(nn.Sequential(nn.Conv2d(64, 64, 5, padding=2)), (8, 64, 256, 256))))[0]
    for grid, extra in (((1, 1, 1), 0.0), ((1, 1, 2), 1e-3), ((1, 2, 2), 1e-3)):
        base = layer_cost(far, grid, m).directions()
        assert layer_cost(far, grid, corrected).directions() == pytest.approx(
            tuple(1.5 * t + extra for t in base), rel=1e-3)
