"""A short training of LeNet on scikit-learn's 8x8 digits reaches at least 95% test accuracy."""
import numpy as np
from sklearn.datasets import load_digits

from hpcnn import models, nn
from hpcnn.train import SGD, CosineLR


def _digits():
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))  # a fixed split: 1400 train, 397 test
    train, test = order[:1400], order[1400:]
    return x[train], y[train], x[test], y[test]


def test_lenet_learns_digits():
    x_train, y_train, x_test, y_test = _digits()
    model = models.build("lenet", seed=0)
    loss = nn.CrossEntropyLoss()
    batch, epochs = 32, 8
    steps_per_epoch = len(y_train) // batch
    schedule = CosineLR(0.05, total_steps=epochs * steps_per_epoch)
    opt = SGD(model, lr=0.05, momentum=0.9, weight_decay=1e-4)
    rng = np.random.default_rng(1)
    step = 0
    losses = []
    for _ in range(epochs):
        order = rng.permutation(len(y_train))
        for i in range(steps_per_epoch):
            idx = order[i * batch:(i + 1) * batch]
            losses.append(loss.forward(model.forward(x_train[idx]), y_train[idx]))
            model.backward(loss.backward())
            opt.step(lr=schedule.lr_at(step))
            step += 1
    assert np.mean(losses[-steps_per_epoch:]) < 0.5 * np.mean(losses[:steps_per_epoch])
    model.eval()
    accuracy = np.mean(np.argmax(model.forward(x_test), axis=1) == y_test)
    assert accuracy >= 0.95, f"test accuracy {accuracy:.3f}"
