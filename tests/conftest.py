import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

BACKENDS = ("tensorflow", "jax", "torch")


def pytest_addoption(parser):
    parser.addoption(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="Keras backend to test (sets KERAS_BACKEND before Keras is imported).",
    )


def pytest_configure(config):
    # Runs before any test module (and so Keras) is imported: one virtual environment
    # can then test all three backends, one pytest run each.
    backend = config.getoption("--backend")
    if backend:
        os.environ["KERAS_BACKEND"] = backend
    import keras

    if backend and keras.backend.backend() != backend:
        raise pytest.UsageError(
            f"--backend={backend} but Keras was already imported with "
            f"{keras.backend.backend()!r}."
        )


def pytest_collection_modifyitems(config, items):
    backend = config.getoption("--backend")
    if backend in (None, "tensorflow"):
        return
    kept, once = [], []
    for item in items:
        (once if item.get_closest_marker("backend_independent") else kept).append(item)
    if once:
        config.hook.pytest_deselected(items=once)
        items[:] = kept


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Every test starts with float32, no distribution and fixed seeds."""
    import keras
    import numpy as np

    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    np.random.seed(0)
    yield
    keras.config.set_dtype_policy("float32")
    if keras.backend.backend() == "jax":
        keras.distribution.set_distribution(None)
    keras.backend.clear_session()


def pytest_report_header(config):
    import keras

    return f"keras {keras.__version__}, backend {keras.backend.backend()}"
