"""Shared test settings: hypothesis without deadlines (CI machines are shared and noisy), and a fixture that
runs torch on one thread (the suite runs two test processes on two cores)."""

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile("evonas", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("slow", deadline=None, max_examples=10_000, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("evonas")


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test, restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
