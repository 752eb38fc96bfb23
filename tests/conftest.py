import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import helpers  # noqa: E402, F401  (sets TensorFlow's CPU options before a test imports it)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
