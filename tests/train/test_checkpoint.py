"""Checkpoints: round trip without pickle, last K kept, a kill during a write leaves the previous one valid."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hpcnn.train import checkpoint as ckpt


def test_round_trip_without_pickle(tmp_path):
    arrays = {"param/conv1.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
              "optim/momentum_buffer.conv1.weight": np.ones((3, 4), np.float32)}
    path = ckpt.save(str(tmp_path), 7, arrays, {"epoch": 1, "rng": [1, 2, 3]})
    assert os.path.basename(path) == "step-000000007.npz"
    got, header = ckpt.load(path)
    assert set(got) == set(arrays) and all(np.array_equal(got[k], arrays[k]) for k in arrays)
    assert header == {"epoch": 1, "rng": [1, 2, 3], "format_version": ckpt.FORMAT_VERSION, "step": 7,
                      "arrays": {"param/conv1.weight": [[3, 4], "<f4"],
                                 "optim/momentum_buffer.conv1.weight": [[3, 4], "<f4"]}}
    with np.load(path, allow_pickle=False) as z:  # a plain .npz: no object arrays anywhere
        assert all(z[k].dtype != object for k in z.files)


def test_keeps_the_last_k(tmp_path):
    for step in (1, 2, 3, 4, 5):
        ckpt.save(str(tmp_path), step, {"a": np.zeros(2)}, {}, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path))] == [4, 5]
    assert ckpt.latest(str(tmp_path)).endswith("step-000000005.npz")
    assert ckpt.latest(str(tmp_path / "empty")) is None


def test_damaged_or_foreign_files_are_refused(tmp_path):
    bad = tmp_path / "step-000000003.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ckpt.CheckpointError, match=f"checkpoint {bad} cannot be read"):
        ckpt.load(str(bad))
    np.savez(tmp_path / "step-000000004.npz", a=np.zeros(1))
    with pytest.raises(ckpt.CheckpointError, match="has no header: not an hpcnn checkpoint"):
        ckpt.load(str(tmp_path / "step-000000004.npz"))
    good = ckpt.save(str(tmp_path), 2, {"a": np.zeros(1)}, {})
    assert ckpt.latest(str(tmp_path)) == good  # newer but unreadable files are passed over


KILL_DURING_WRITE = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from hpcnn.train import checkpoint as ckpt
    folder, where = sys.argv[1], sys.argv[2]
    ckpt.save(folder, 1, {"param/w": np.full(1000, 1.0)}, {"epoch": 0})
    big = {"param/w": np.full(3_000_000, 2.0)}
    if where == "write":
        # killed in the middle of writing the array data
        real_write = None
        import zipfile
        real = zipfile.ZipFile.open
        def dying_open(self, name, mode="r", **kw):
            f = real(self, name, mode, **kw)
            if mode == "w" and name.startswith("param/"):
                w = f.write
                def write(b):
                    w(bytes(memoryview(b)[:len(b) // 2]))
                    os.kill(os.getpid(), signal.SIGKILL)
                f.write = write
            return f
        zipfile.ZipFile.open = dying_open
    else:
        # killed after the data is on disk, before the rename
        os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
    ckpt.save(folder, 2, big, {"epoch": 1})
""")


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_kill_during_write_keeps_the_previous_checkpoint(tmp_path, where):
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_WRITE, str(tmp_path), where], timeout=60,
                          capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith(".")]
    assert leftovers, "the killed writer should have left its temporary file"
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path))] == [1]
    path = ckpt.latest(str(tmp_path))
    arrays, header = ckpt.load(path)
    assert header["step"] == 1 and np.array_equal(arrays["param/w"], np.full(1000, 1.0))
    ckpt.save(str(tmp_path), 3, {"param/w": np.zeros(1)}, {}, keep=5)  # the next save cleans up
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]
