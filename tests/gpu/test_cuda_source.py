"""Every CUDA program compiles with nvcc for an H100/H200 (sm_90), float and double, where nvcc exists."""
import shutil
import subprocess

import numpy as np
import pytest

_NVCC = shutil.which("nvcc")


@pytest.mark.skipif(_NVCC is None, reason="needs nvcc")
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float", "double"])
def test_programs_compile(tmp_path, monkeypatch, dtype):
    monkeypatch.setenv("HPCNN_GPU_EMULATE", "1")
    from hpcnn.kernels.gpu import activation, conv, loss, norm, pool
    for module in (activation, conv, loss, norm, pool):
        program = module._PROGRAM
        src = tmp_path / f"{program.name}.cu"
        src.write_text(program.source_for(dtype))
        done = subprocess.run([_NVCC, "-arch=sm_90", "-std=c++14", "--cubin", "-Werror", "all-warnings",
                               "-o", str(tmp_path / f"{program.name}.cubin"), str(src)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{program.name} ({np.dtype(dtype)}):\n{done.stderr}"
