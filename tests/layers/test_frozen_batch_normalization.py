import keras
import numpy as np
import pytest

from keras_vtx.layers.frozen_batch_normalization import FrozenBatchNormalization
from tests.test_case import (
    assert_config_round_trip,
    gradients,
    save_load_in_functional_model,
    to_numpy,
)


def _random_norm(channels=5, epsilon=1e-5, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    norm = FrozenBatchNormalization(epsilon=epsilon, **kwargs)
    norm.build((None, channels))
    norm.gamma.assign(rng.normal(1.0, 0.5, channels).astype("float32"))
    norm.beta.assign(rng.normal(0.0, 0.5, channels).astype("float32"))
    norm.moving_mean.assign(rng.normal(0.0, 2.0, channels).astype("float32"))
    # Tiny variances make epsilon matter.
    norm.moving_variance.assign(rng.uniform(1e-6, 3.0, channels).astype("float32"))
    return norm


def _np_frozen_bn(norm, x):
    w = {name: to_numpy(getattr(norm, name)).astype("float64")
         for name in ("gamma", "beta", "moving_mean", "moving_variance")}
    x = np.asarray(x, "float64")
    return (x - w["moving_mean"]) / np.sqrt(w["moving_variance"] + norm.epsilon) * w[
        "gamma"] + w["beta"]


@pytest.mark.parametrize("epsilon", [1e-5, 0.1])
def test_matches_numpy(epsilon):
    norm = _random_norm(epsilon=epsilon)
    x = np.random.default_rng(1).normal(0.0, 3.0, (2, 3, 4, 5)).astype("float32")
    out = to_numpy(norm(x))
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, _np_frozen_bn(norm, x), rtol=1e-5, atol=1e-4)


def test_weights_never_train():
    norm = _random_norm()
    assert [w.name for w in norm.non_trainable_weights] == [
        "gamma", "beta", "moving_mean", "moving_variance"]
    assert norm.trainable_weights == []
    norm.trainable = True
    assert norm.trainable_weights == []
    # Training mode changes nothing: the statistics are not updated.
    x = np.random.default_rng(2).normal(size=(4, 5)).astype("float32")
    before = [to_numpy(w) for w in norm.weights]
    np.testing.assert_array_equal(to_numpy(norm(x, training=True)), to_numpy(norm(x)))
    for b, w in zip(before, norm.weights):
        np.testing.assert_array_equal(b, to_numpy(w))


def test_input_gradient_is_the_scale():
    norm = _random_norm()
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(5, use_bias=False), norm])
    dense = model.layers[0]
    dense.kernel.assign(np.eye(5, dtype="float32"))
    x = np.ones((1, 5), "float32")
    (grad,) = gradients(model, x, loss_fn=lambda out, y: keras.ops.sum(out))
    scale = to_numpy(norm.gamma) / np.sqrt(to_numpy(norm.moving_variance) + norm.epsilon)
    # d sum(y) / d kernel[i, j] = x_i * scale_j
    np.testing.assert_allclose(grad, np.ones((5, 1)) * scale[None], rtol=1e-5)


def test_mixed_precision_keeps_statistics_in_float32():
    keras.config.set_dtype_policy("mixed_float16")
    norm = FrozenBatchNormalization(epsilon=0.0)
    norm.build((None, 2))
    # float16 would flush the 1e-8 variance to 0 (scale inf) and round the mean 1000.25
    # to 1000 or 1000.5; in float32 both outputs are exact.
    norm.gamma.assign(np.array([1e-4, 1.0], "float32"))
    norm.moving_variance.assign(np.array([1e-8, 4.0], "float32"))
    norm.moving_mean.assign(np.array([0.0, 1000.25], "float32"))
    assert all(w.dtype == "float32" for w in norm.weights)
    out = norm(np.array([[1.0, 1000.0]], "float32"))
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    np.testing.assert_allclose(to_numpy(out).astype("float32"), [[1.0, -0.125]], rtol=1e-3)


def test_config_and_save_load(tmp_path):
    norm = _random_norm(epsilon=1e-3, name="frozen")
    clone = assert_config_round_trip(norm)
    assert clone.epsilon == 1e-3
    x = np.random.default_rng(3).normal(size=(2, 3, 3, 5)).astype("float32")
    reloaded = save_load_in_functional_model(norm, x, tmp_path)
    for a, b in zip(reloaded.weights, norm.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_bad_arguments():
    with pytest.raises(ValueError, match="epsilon"):
        FrozenBatchNormalization(epsilon=-1.0)
    with pytest.raises(ValueError, match="channel"):
        FrozenBatchNormalization().build((None, 4, None))
