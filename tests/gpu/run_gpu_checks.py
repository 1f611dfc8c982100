"""Run the GPU kernel checks without pytest (for GPU machines where pytest is not installed).

python tests/gpu/run_gpu_checks.py   ->  prints one line per check and 'N passed, N failed'
"""
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

from tests.gpu import kernel_cases  # noqa: E402


def _checks():
    gpu, asarray, torch_device = kernel_cases.exact_float32_gpu()
    for name, check, case in kernel_cases.all_cases():
        yield name, lambda check=check, case=case: check(gpu, asarray, case, torch_device=torch_device)
    for family in ("conv", "pool", "norm", "loss"):
        check, table = kernel_cases.CHECKS[family]
        yield f"{family}-float64", lambda check=check, case=table[0]: check(gpu, asarray, case,
                                                                            dtype=np.float64)
    from tests.gpu.device_models import check_training_run
    yield "training-run", check_training_run


def main():
    passed = failed = 0
    for name, run in _checks():
        try:
            run()
        except Exception:
            failed += 1
            print(f"FAILED {name}\n{traceback.format_exc()}", flush=True)
        else:
            passed += 1
            print(f"ok {name}", flush=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
