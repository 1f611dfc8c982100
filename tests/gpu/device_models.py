"""Moving an hpcnn.nn model to the GPU for the tests: parameters, gradients and state as cupy arrays."""
import copy

import numpy as np

from .kernel_cases import assert_close

__all__ = ["to_gpu", "small_cnn", "check_training_run"]


def to_gpu(model):
    """A deep copy of `model` whose arrays live on the current GPU."""
    import cupy
    model = copy.deepcopy(model)
    for m in model.modules():
        for key in list(m.params):
            m.params[key] = cupy.asarray(m.params[key])
            m.grads[key] = cupy.zeros_like(m.params[key])
        for key in m._state_names():
            setattr(m, key, cupy.asarray(getattr(m, key)))
    return model


def small_cnn(classes=4):
    from hpcnn import nn
    nn.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.GlobalAvgPool(),
                         nn.Linear(8, classes))


def _train(model, x, labels, steps, lr=0.1):
    from hpcnn import nn
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for _ in range(steps):
        losses.append(loss_fn(model.forward(x), labels))
        model.backward(loss_fn.backward())
        for _, p, g in model.parameters():
            p -= lr * g
    return losses


def check_training_run():
    """10 SGD steps of a small CNN on the GPU and on the CPU from the same start: same losses, same weights."""
    import cupy
    from hpcnn.kernels import gpu
    gpu.set_tf32(False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 16, 16)).astype(np.float32)
    labels = rng.integers(0, 4, 8)
    cpu_model = small_cnn()
    gpu_model = to_gpu(cpu_model)
    cpu_losses = _train(cpu_model, x, labels, 10)
    gpu_losses = _train(gpu_model, cupy.asarray(x), cupy.asarray(labels), 10)
    assert_close(np.array(gpu_losses), np.array(cpu_losses), "loss curve on GPU vs CPU")
    assert gpu_losses[-1] < gpu_losses[0]
    for (name, p_cpu, _), (_, p_gpu, _) in zip(cpu_model.parameters(), gpu_model.parameters()):
        assert isinstance(p_gpu, cupy.ndarray), name
        assert_close(p_gpu, p_cpu, f"parameter {name} after training")
