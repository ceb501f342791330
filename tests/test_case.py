"""Shared test helpers: backend-neutral comparisons and tiny configs."""

import keras
import numpy as np

BACKEND = keras.backend.backend()

# A ViT small enough for every test to build in well under a second.
TINY_VIT = dict(
    image_size=16, patch_size=4, num_layers=2, hidden_dim=16, num_heads=2, mlp_dim=32
)


def to_numpy(x):
    """Converts a backend tensor (or a nest of them) to NumPy."""
    if isinstance(x, dict):
        return {k: to_numpy(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_numpy(v) for v in x)
    return np.asarray(keras.ops.convert_to_numpy(x))


def assert_allclose(actual, desired, atol=1e-5, rtol=1e-5, err_msg=""):
    np.testing.assert_allclose(to_numpy(actual), to_numpy(desired), atol=atol, rtol=rtol,
                               err_msg=err_msg)


def random_images(batch=2, size=16, channels=3, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    if isinstance(size, int):
        size = (size, size)
    return (rng.standard_normal((batch, *size, channels)) * scale).astype("float32")
