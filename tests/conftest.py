import numpy as np
import pytest

import adjoints.backend as B


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
