"""Device-to-host and host-to-device staging bandwidth: what a message from a GPU costs beyond MPI when MPI is not
CUDA-aware (the copies `hpcnn.parallel.staging` makes around every send and receive)."""
import time

import numpy as np

from ..parallel import staging

__all__ = ["measure_staging", "staging_section"]


def measure_staging(device, sizes, reps=10):
    """[(bytes, device-to-host seconds, host-to-device seconds)]: the median over `reps` of staging one array of
    each size out (prepare_sends: the copy and its synchronisation) and back in (finish_recv, synchronized)."""
    rows = []
    for nbytes in sizes:
        a = device.xp.zeros(max(nbytes, 1), np.uint8)
        out, back = [], []
        for i in range(reps + 1):
            device.synchronize()
            t0 = time.perf_counter()
            host, = staging.prepare_sends([a])
            t1 = time.perf_counter()
            staging.finish_recv(a, host)
            device.synchronize()
            t2 = time.perf_counter()
            if i:
                out.append(t1 - t0)
                back.append(t2 - t1)
        rows.append((int(nbytes), float(np.median(out)), float(np.median(back))))
    return rows


def _fit(rows, column, source):
    small = [r[column] for r in rows if r[0] <= 4096]
    big = [(r[0], r[column]) for r in rows if r[0] >= 1 << 20]
    alpha = float(np.median(small)) if small else 0.0
    beta = float(np.polyfit([b for b, _ in big], [t for _, t in big], 1)[0]) if len(big) >= 2 else 0.0
    return {"alpha": {"value": alpha, "source": source}, "beta": {"value": max(beta, 0.0), "source": source}}


def staging_section(rows, source):
    """The profile's "staging" section: alpha (small-copy latency) and beta (seconds per byte) each way."""
    return {"source": source, "device_to_host": _fit(rows, 1, source), "host_to_device": _fit(rows, 2, source),
            "rows": [list(r) for r in rows]}
