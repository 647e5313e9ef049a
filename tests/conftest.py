"""Test configuration: hypothesis profiles, markers that skip without their means, shared fixtures.

Plain helper functions shared by test modules are in ``tests/helpers.py``; no test module imports
another.
"""

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=30, deadline=None)
settings.register_profile(
    "ci",
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
# tox -e fuzz: randomised, many examples (tests/test_hostile_input.py explores every hostile value
# of every numeric option; the property tests of rmt and nnhessian draw far more parameters)
settings.register_profile(
    "fuzz",
    max_examples=500,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op torch thread while a module's tests run, restored after.

    The test problems are tiny (P ~ 500, N ~ 23): threads only add synchronisation, and on a
    loaded 2-core machine OpenMP spin-waiting made products 10-30x slower. Not autouse: the
    torch modules that want it say ``pytestmark = pytest.mark.usefixtures("single_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    run_slow = os.environ.get("RUN_SLOW") == "1"
    skip_slow = pytest.mark.skip(reason="slow: run with tox -e slow (RUN_SLOW=1)")
    skip_gpu = pytest.mark.skip(reason="gpu: no CUDA device")
    has_cuda = None
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords:
            if has_cuda is None:
                has_cuda = _cuda_available()
            if not has_cuda:
                item.add_marker(skip_gpu)
