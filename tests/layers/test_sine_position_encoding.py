import math

import keras
import numpy as np
import pytest

from keras_vtx.layers.sine_position_encoding import SinePositionEncoding2D
from tests.test_case import assert_allclose, assert_config_round_trip, to_numpy


def _padded_mask():
    mask = np.ones((2, 6, 7), "int32")
    mask[1, 4:] = 0
    mask[1, :, 5:] = 0
    return mask


def _np_encoding(mask, num_pos_feats, temperature=10000.0, scale=2 * math.pi):
    mask = mask.astype("float64")
    y, x = mask.cumsum(1), mask.cumsum(2)
    y = y / (y[:, -1:, :] + 1e-6) * scale
    x = x / (x[:, :, -1:] + 1e-6) * scale
    dim_t = temperature ** (2 * (np.arange(num_pos_feats) // 2) / num_pos_feats)

    def encode(p):
        a = p[..., None] / dim_t
        out = np.empty_like(a)
        out[..., 0::2], out[..., 1::2] = np.sin(a[..., 0::2]), np.cos(a[..., 1::2])
        return out

    return np.concatenate([encode(y), encode(x)], -1)


def test_matches_numpy_on_a_padded_mask():
    mask = _padded_mask()
    out = SinePositionEncoding2D(num_pos_feats=8)(mask)
    assert tuple(out.shape) == (2, 6, 7, 16)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert_allclose(out, _np_encoding(mask, 8), atol=1e-5)
    # The padded image's real pixels are encoded as an unpadded image of their size.
    small = SinePositionEncoding2D(num_pos_feats=8)(np.ones((1, 4, 5), "int32"))
    assert_allclose(to_numpy(out)[1, :4, :5], to_numpy(small)[0], atol=1e-5)


def test_matches_transformers():
    torch = pytest.importorskip("torch")
    from transformers.models.detr.modeling_detr import DetrSinePositionEmbedding

    mask = _padded_mask()
    reference = DetrSinePositionEmbedding(num_position_features=8, normalize=True)(
        shape=(2, 16, 6, 7), device="cpu", dtype=torch.float32,
        mask=torch.from_numpy(mask).bool(),
    ).permute(0, 2, 3, 1).numpy()
    assert_allclose(SinePositionEncoding2D(8)(mask), reference, atol=1e-5)


def test_unnormalized_temperature_and_mixed_precision():
    keras.config.set_dtype_policy("mixed_bfloat16")
    mask = _padded_mask()
    layer = SinePositionEncoding2D(num_pos_feats=4, temperature=20.0, normalize=False)
    out = layer(mask)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    y = mask.cumsum(1)[..., None] / 20.0 ** (2 * (np.arange(4) // 2) / 4)
    assert_allclose(to_numpy(out)[..., 0], np.sin(y[..., 0]), atol=1e-5)
    assert_allclose(to_numpy(out)[..., 3], np.cos(y[..., 3]), atol=1e-5)


def test_config_and_bad_arguments():
    layer = SinePositionEncoding2D(num_pos_feats=6, temperature=100.0, scale=1.0)
    clone = assert_config_round_trip(layer)
    assert clone.scale == 1.0 and clone.num_pos_feats == 6
    with pytest.raises(ValueError, match="num_pos_feats"):
        SinePositionEncoding2D(num_pos_feats=5)
    with pytest.raises(ValueError, match="pixel_mask"):
        SinePositionEncoding2D(4)(np.ones((2, 3), "int32"))
