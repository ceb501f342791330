import gc
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
    """Deselects tests that run in another backend's session.

    `backend_independent` tests run once: those of tests/data/ (tf.data
    pipelines) in the TensorFlow session, the others in the PyTorch session (the
    shortest, which balances CI's three concurrent sessions);
    `only_backend("torch")` tests (long end-to-end runs, such as the example
    notebooks, whose backend-specific parts the unit tests already cover on all
    three) run in that backend's session. Without `--backend`, everything runs.
    """
    backend = config.getoption("--backend")
    if backend is None:
        return
    kept, elsewhere = [], []
    for item in items:
        only = item.get_closest_marker("only_backend")
        if only is not None:
            home = only.args[0]
        elif item.get_closest_marker("backend_independent"):
            data = os.path.join("tests", "data", "") in str(item.path)
            home = "tensorflow" if data else "torch"
        else:
            home = backend
        (kept if home == backend else elsewhere).append(item)
    if elsewhere:
        config.hook.pytest_deselected(items=elsewhere)
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
    # Without clear_session()'s own full garbage collection: gc.collect() over the heap of
    # three frameworks takes ~1 s, and once per test it was a third of each session's time
    # (measured: 1.1-1.6 s teardowns of tests that take milliseconds). Python's generational
    # collector still runs; a full collection every 25 tests keeps memory bounded. What
    # survives it (the frameworks' modules, caches, module-scoped fixtures) is frozen out
    # of later collections, ours and Python's own, which then scan only what the tests
    # made since (in CI the 25-31 full collections per session took 1.7-4.5 s each: 115 s
    # of the JAX session). Every 200 tests the frozen objects are collected too, so cycles
    # freed after their freeze do not pile up.
    keras.backend.clear_session(free_memory=False)
    _TEARDOWNS[0] += 1
    if _TEARDOWNS[0] % 25 == 0:
        if _TEARDOWNS[0] % 200 == 0:
            gc.unfreeze()
        gc.collect()
        gc.freeze()


_TEARDOWNS = [0]


def pytest_report_header(config):
    import keras

    return f"keras {keras.__version__}, backend {keras.backend.backend()}"
