"""A short training run on the GPU follows the CPU run step for step."""
import pytest

from .device_models import check_training_run

pytestmark = pytest.mark.gpu


def test_training_on_gpu_matches_cpu():
    check_training_run()
