import keras
import numpy as np
import pytest

from keras_vtx.layers import ImageNormalization
from tests.test_case import assert_allclose, assert_config_round_trip, save_load_in_functional_model

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _pixels():
    return np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")


def test_values():
    x = _pixels()
    out = ImageNormalization(1 / 255, MEAN, STD)(x)
    assert_allclose(out, (x / 255.0 - np.array(MEAN)) / np.array(STD), atol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_output_dtype(policy):
    keras.config.set_dtype_policy(policy)
    x = _pixels()
    out = ImageNormalization(1 / 255, MEAN, STD)(x)
    assert keras.backend.standardize_dtype(out.dtype) == policy.split("_")[1]
    expected = (x / 255.0 - np.array(MEAN)) / np.array(STD)
    assert_allclose(keras.ops.cast(out, "float32"), expected, atol=2e-2, rtol=1e-2)


def test_errors():
    with pytest.raises(ValueError, match="same length"):
        ImageNormalization(1.0, (0.5, 0.5), (0.5,))
    with pytest.raises(ValueError, match="positive"):
        ImageNormalization(1.0, (0.5,), (0.0,))
    with pytest.raises(ValueError, match="4 channels"):
        ImageNormalization(1.0, MEAN, STD)(np.zeros((1, 2, 2, 4), "float32"))


def test_config_round_trip_and_save_load(tmp_path):
    layer = ImageNormalization(1 / 255, MEAN, STD, name="normalization")
    clone = assert_config_round_trip(layer)
    assert clone.mean == list(MEAN)
    save_load_in_functional_model(layer, _pixels(), tmp_path)
