import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Every test starts with float32, no distribution and fixed seeds."""
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    np.random.seed(0)
    yield
    keras.config.set_dtype_policy("float32")
    if keras.backend.backend() == "jax":
        keras.distribution.set_distribution(None)
    keras.backend.clear_session()


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"
