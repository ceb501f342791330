import numpy as np
import pytest

from keras_vtx.layers import PatchEmbedding
from tests.test_case import (
    assert_all_weights_get_gradients,
    assert_allclose,
    assert_config_round_trip,
    random_images,
    randomize_weights,
    save_load_in_functional_model,
    to_numpy,
)


def _np_patch_embedding(layer, images):
    """The paper's eq. 1: flatten each patch (rows, columns, channels) and project it."""
    b, h, w, c = images.shape
    ph, pw = layer.patch_size
    patches = images.reshape(b, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(b, (h // ph) * (w // pw), ph * pw * c).astype("float64")
    kernel = to_numpy(layer.projection.kernel).reshape(ph * pw * c, layer.hidden_dim)
    return patches @ kernel + to_numpy(layer.projection.bias)


@pytest.mark.parametrize("patch_size,size", [(4, (16, 12)), ((4, 2), (8, 6))])
def test_equals_linear_projection_of_flattened_patches(patch_size, size):
    images = random_images(2, size, channels=3)
    layer = PatchEmbedding(8, patch_size)
    layer.build(images.shape)
    randomize_weights(layer)
    out = layer(images)
    ph, pw = layer.patch_size
    assert tuple(out.shape) == (2, (size[0] // ph) * (size[1] // pw), 8)
    assert layer.compute_output_shape(images.shape) == tuple(out.shape)
    assert_allclose(out, _np_patch_embedding(layer, images), atol=1e-5)


def test_raster_order():
    # A one-hot image: only patch (row 1, column 2) of a 3x3 grid is non-zero.
    images = np.zeros((1, 12, 12, 1), "float32")
    images[0, 4:8, 8:12] = 1.0
    layer = PatchEmbedding(2, 4, use_bias=False, kernel_initializer="ones")
    out = to_numpy(layer(images))
    assert np.flatnonzero(out[0, :, 0]).tolist() == [1 * 3 + 2]


def test_errors():
    with pytest.raises(ValueError, match="divisible by `patch_size`"):
        PatchEmbedding(8, 4)(random_images(1, (16, 14)))
    with pytest.raises(ValueError, match="rank 4"):
        PatchEmbedding(8, 4)(np.zeros((1, 16, 3), "float32"))
    with pytest.raises(ValueError, match="patch_size"):
        PatchEmbedding(8, (4, 4, 4))
    with pytest.raises(ValueError, match="patch_size"):
        PatchEmbedding(8, (4, 0))


def test_unknown_spatial_size_shape():
    assert PatchEmbedding(8, 4).compute_output_shape((None, None, 16, 3)) == (None, None, 8)


def test_config_round_trip_and_save_load(tmp_path):
    layer = PatchEmbedding(8, (4, 2), use_bias=False, kernel_initializer="he_normal",
                           name="patch_embedding")
    clone = assert_config_round_trip(layer)
    assert clone.patch_size == (4, 2) and clone.use_bias is False
    save_load_in_functional_model(layer, random_images(2, 8), tmp_path)


def test_gradients_reach_every_weight():
    images = random_images(2, 8)
    layer = PatchEmbedding(4, 4)
    layer.build(images.shape)
    assert_all_weights_get_gradients(layer, images)
