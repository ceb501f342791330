import numpy as np
import pytest
import torch

from keras_vtx.layers import (
    PositionEmbedding,
    SineCosine2DInitializer,
    resample_position_embeddings,
)
from keras_vtx.ops import resize_bicubic
from tests.test_case import (
    assert_config_round_trip,
    gradients,
    save_load_in_functional_model,
    to_numpy,
)


def _x(length=5, width=8, batch=2):
    return np.random.default_rng(0).standard_normal((batch, length, width)).astype("float32")


def _torch_bicubic(grid, size):
    """PyTorch's bicubic resize of an `(h, w, c)` array, float64, align_corners=False."""
    t = torch.from_numpy(np.asarray(grid, "float64")).permute(2, 0, 1)[None]
    out = torch.nn.functional.interpolate(t, size=size, mode="bicubic", align_corners=False)
    return out[0].permute(1, 2, 0).numpy()


def test_adds_the_table():
    x = _x()
    layer = PositionEmbedding(5)
    out = to_numpy(layer(x))
    table = to_numpy(layer.position_embeddings)
    np.testing.assert_allclose(out, x + table[None], atol=1e-6)


def test_shorter_inputs_use_the_first_rows():
    layer = PositionEmbedding(7)
    layer.build((None, 7, 8))
    x = _x(length=3)
    table = to_numpy(layer.position_embeddings)
    np.testing.assert_allclose(to_numpy(layer(x)), x + table[None, :3], atol=1e-6)


def test_longer_inputs_raise():
    with pytest.raises(ValueError, match="longer than the position table"):
        PositionEmbedding(4)(_x(length=5))
    layer = PositionEmbedding(4)
    layer.build((None, 4, 8))
    with pytest.raises(ValueError, match="sequence_length"):
        layer(_x(length=6))
    with pytest.raises(ValueError, match="sequence_length"):
        PositionEmbedding(0)


def test_default_initializer_is_normal_002():
    layer = PositionEmbedding(64)
    layer.build((None, 64, 64))
    table = to_numpy(layer.position_embeddings)
    assert abs(table.std() - 0.02) < 0.002 and abs(table.mean()) < 0.002


def test_config_round_trip_and_save_load(tmp_path):
    layer = PositionEmbedding(5, initializer="random_uniform", name="position_embedding")
    clone = assert_config_round_trip(layer)
    assert clone.sequence_length == 5
    save_load_in_functional_model(layer, _x(), tmp_path)
    assert layer.compute_output_shape((None, 5, 8)) == (None, 5, 8)


def test_gradient_is_summed_over_batch():
    import keras

    x = _x(length=3, batch=4)
    layer = PositionEmbedding(6)
    layer.build((None, 6, 8))
    (grad,) = gradients(layer, x, loss_fn=lambda out, y: keras.ops.sum(out))
    expected = np.zeros((6, 8), "float32")
    expected[:3] = 4.0
    np.testing.assert_allclose(grad, expected, atol=1e-6)


# --- resample_position_embeddings ---


@pytest.mark.parametrize("old,new", [((4, 4), (6, 6)), ((4, 6), (3, 5)), ((2, 2), (7, 3))])
@pytest.mark.parametrize("prefix", [0, 1, 2])
def test_resample_matches_torch_and_keeps_prefix(old, new, prefix):
    rng = np.random.default_rng(1)
    table = rng.standard_normal((prefix + old[0] * old[1], 8)).astype("float32")
    out = resample_position_embeddings(table, old, new, num_prefix_tokens=prefix)
    assert out.shape == (prefix + new[0] * new[1], 8)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[:prefix], table[:prefix])
    expected = _torch_bicubic(table[prefix:].reshape(old + (8,)), new).reshape(-1, 8)
    np.testing.assert_allclose(out[prefix:], expected, atol=1e-6, rtol=0)


def test_resample_identity_on_same_grid():
    table = np.random.default_rng(0).standard_normal((17, 8)).astype("float32")
    out = resample_position_embeddings(table, (4, 4), (4, 4))
    np.testing.assert_array_equal(out, table)
    assert out is not table


def test_resample_accepts_backend_tensors():
    import keras

    table = np.random.default_rng(0).standard_normal((17, 4)).astype("float32")
    out = resample_position_embeddings(keras.ops.convert_to_tensor(table), (4, 4), (2, 2))
    assert out.shape == (5, 4)


def test_resample_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="embeddings"):
        resample_position_embeddings(np.zeros((16, 8)), (4, 4), (6, 6))
    with pytest.raises(ValueError, match="embeddings"):
        resample_position_embeddings(np.zeros((1, 17, 8)), (4, 4), (6, 6))


# --- resize_bicubic ---


@pytest.mark.parametrize("size", [(9, 4), (3, 11), (5, 7), (1, 1)])
def test_resize_bicubic_matches_torch_exactly(size):
    array = np.random.default_rng(2).standard_normal((5, 7, 3))
    out = resize_bicubic(array, size)
    assert out.dtype == np.float64 and out.shape == size + (3,)
    np.testing.assert_allclose(out, _torch_bicubic(array, size), atol=1e-12, rtol=0)


def test_resize_bicubic_kernel_parameter_matters():
    array = np.random.default_rng(2).standard_normal((4, 4))
    torch_like = resize_bicubic(array, (7, 7))
    tf_like = resize_bicubic(array, (7, 7), a=-0.5)
    assert np.abs(torch_like - tf_like).max() > 1e-3
    # A constant image stays constant whatever the kernel (weights sum to 1).
    np.testing.assert_allclose(resize_bicubic(np.ones((3, 5, 2)), (8, 2)), 1.0, atol=1e-12)


def test_resize_bicubic_errors():
    with pytest.raises(ValueError, match="array"):
        resize_bicubic(np.ones(4), (2, 2))
    with pytest.raises(ValueError, match="size"):
        resize_bicubic(np.ones((4, 4)), (2, 0))
    with pytest.raises(ValueError, match="size"):
        resize_bicubic(np.ones((4, 4)), (2,))


@pytest.mark.parametrize("grid, prefix, scale", [((4, 4), 1, 0.1), ((3, 5), 0, 1.0), ((2, 7), 1, 2.0)])
def test_sine_cosine_initializer_matches_transformers(grid, prefix, scale):
    from transformers.models.vit_mae.modeling_vit_mae import (
        build_2d_sinusoidal_position_embedding,
    )

    width = 16
    reference = build_2d_sinusoidal_position_embedding(
        grid[0], grid[1], width, cls_token=bool(prefix)
    ).numpy()
    layer = PositionEmbedding(prefix + grid[0] * grid[1],
                              initializer=SineCosine2DInitializer(grid, prefix, scale=scale))
    layer.build((None, prefix + grid[0] * grid[1], width))
    np.testing.assert_allclose(to_numpy(layer.position_embeddings), scale * reference,
                               atol=1e-6)


def test_sine_cosine_initializer_serialises_inside_the_layer(tmp_path):
    initializer = SineCosine2DInitializer((2, 3), num_prefix_tokens=1, scale=0.5,
                                          temperature=100.0)
    layer = PositionEmbedding(7, initializer=initializer, name="position_embedding")
    clone = assert_config_round_trip(layer)
    assert isinstance(clone.initializer, SineCosine2DInitializer)
    assert clone.initializer.get_config() == initializer.get_config()
    clone.build((None, 7, 8))
    np.testing.assert_allclose(to_numpy(clone.position_embeddings),
                               to_numpy(initializer((7, 8))), atol=1e-7)


def test_sine_cosine_initializer_rejects_bad_shapes():
    initializer = SineCosine2DInitializer((2, 3))
    with pytest.raises(ValueError, match=r"shape \(7, D\).*received shape \(6, 8\)"):
        initializer((6, 8))
    with pytest.raises(ValueError, match="divisible by 4.*received shape \\(7, 10\\)"):
        initializer((7, 10))
    with pytest.raises(ValueError, match="`grid_size`"):
        SineCosine2DInitializer((2, 0))
    with pytest.raises(ValueError, match="`num_prefix_tokens`"):
        SineCosine2DInitializer((2, 2), num_prefix_tokens=-1)
