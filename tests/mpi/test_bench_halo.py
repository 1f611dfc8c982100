"""`hpcnn bench halo` runs on the ranks it is given and reports what it promises (a tiny image)."""
import numpy as np
import pytest

from hpcnn.bench import halo
from tests.mpi.collective import check_all, world

pytestmark = pytest.mark.mpi


def test_halo_benchmark_smoke():
    p = world().Get_size()
    r = halo.measure(size=8 * p, channels=2, widths=(2, 2), dilations=(1, 2), iterations=1)
    # the traced peak holds at least this rank's float32 input block; the resident peak holds the traced one
    input_bytes = 4 * int(np.prod(r["local_shape"]))
    ok = (set(r["modes"]) == {"on", "off"} and r["peak_traced_bytes"] >= input_bytes
          and r["peak_rss_bytes"] >= r["peak_traced_bytes"])
    sent = r["modes"]["on"]["bytes_sent"]
    check_all(ok and ((sent > 0) == (p > 1)), f"halo benchmark result {r}")
