import numpy as np
import pytest

import adjoints.backend as B
from adjoints import settings


def pytest_collection_modifyitems(config, items):
    if B.cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device and CuPy")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def engine_threads():
    """``set_threads`` of the engine for one test; the previous setting comes back afterwards."""
    old = settings.thread_setting()
    yield settings.set_threads
    settings.set_threads(old)
