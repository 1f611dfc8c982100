"""A short single-process training run on the GPU beside the same run on the CPU (for the GPU tests)."""
import copy

import numpy as np

from .kernel_cases import assert_close

__all__ = ["small_cnn", "check_training_run"]


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
    from tests.devices import device
    dev = device("gpu")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 16, 16)).astype(np.float32)
    labels = rng.integers(0, 4, 8)
    cpu_model = small_cnn()
    gpu_model = copy.deepcopy(cpu_model).to(dev)
    cpu_losses = _train(cpu_model, x, labels, 10)
    gpu_losses = _train(gpu_model, dev.put(x), dev.put(labels), 10)
    assert_close(np.array(gpu_losses), np.array(cpu_losses), "loss curve on GPU vs CPU")
    assert gpu_losses[-1] < gpu_losses[0]
    for (name, p_cpu, _), (_, p_gpu, _) in zip(cpu_model.parameters(), gpu_model.parameters()):
        assert isinstance(p_gpu, cupy.ndarray), name
        assert_close(p_gpu, p_cpu, f"parameter {name} after training")
