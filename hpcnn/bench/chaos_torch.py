"""PyTorch CPU on the network `hpcnn bench chaos` trains: the same weights, sample order, batch and learning rate."""
import math
import time

__all__ = ["torch_runs"]


def _mirrored(model):
    """The PyTorch module computing what `model` computes, with copies of its weights."""
    from ..nn.torch_mirror import copy_into_torch, torch_mirror
    return copy_into_torch(model, torch_mirror(model))


def torch_runs(name, options, train, val, epochs, threads, batch, lr, seconds_cap):
    """PyTorch CPU training the network of `name` (LeNet with `options`, seed 0) on `train` for `epochs`
    epochs with SGD (mini-batch `batch`, cosine from `lr`), the sample order of a CHAOS run, once per
    intra-op thread count of `threads`, each stopped after `seconds_cap` seconds; one row per count
    ([] without PyTorch)."""
    try:
        import torch
    except ImportError:
        print("  PyTorch is not installed: skipping the PyTorch CPU comparison (pip install torch to get it)")
        return []
    from .. import chaos, models
    from ..train.schedule import CosineLR
    x, y = torch.from_numpy(train[0]), torch.from_numpy(train[1])
    xv, yv = torch.from_numpy(val[0]), torch.from_numpy(val[1])
    n = len(y)
    batches = math.ceil(n / batch)
    schedule = CosineLR(lr, batches * epochs)
    saved = torch.get_num_threads()
    rows = []
    try:
        for count in threads:
            torch.set_num_threads(count)
            net = _mirrored(models.build("lenet", seed=0, **options))
            opt = torch.optim.SGD(net.parameters(), lr=lr)
            step, seconds, done, capped = 0, 0.0, 0, False
            for epoch in range(epochs):
                if capped:
                    break
                order = torch.from_numpy(chaos.epoch_order(n, epoch, 0))
                t0 = time.perf_counter()
                for j in range(batches):
                    if j % 16 == 0 and seconds + time.perf_counter() - t0 > seconds_cap:
                        capped = True
                        break
                    idx = order[j * batch:(j + 1) * batch]
                    for group in opt.param_groups:
                        group["lr"] = schedule.lr_at(step)
                    opt.zero_grad(set_to_none=True)
                    loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
                    loss.backward()
                    opt.step()
                    step += 1
                    done += len(idx)
                seconds += time.perf_counter() - t0
            with torch.no_grad():
                accuracy = float((net(xv).argmax(1) == yv).float().mean())
            ips = done / seconds
            what = (f"stopped by --torch-seconds after {step} steps" if capped
                    else f"val accuracy after {epochs} epoch(s) {accuracy:.4f}")
            print(f"  {name} PyTorch {torch.__version__} CPU, {count} thread(s): {ips:8.0f} images/s, {what}",
                  flush=True)
            rows.append({"network": name, "workers": 1, "blas_threads": count, "step": "pytorch",
                         "epochs": round(step / batches, 3), "images_per_second": ips,
                         "val_accuracy": None if capped else accuracy})
    finally:
        torch.set_num_threads(saved)
    return rows
