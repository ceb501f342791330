import keras
import numpy as np
import pytest
from PIL import Image

from keras_vtx.analysis.vit_attention import (
    attention_maps,
    attention_rollout,
    attention_scores,
    plot_attention_maps,
)
from keras_vtx.models import CLIP, ViTBackbone, ViTClassifier
from tests.test_case import TINY_VIT, assert_allclose, random_images, to_numpy


def _random_stochastic(rng, shape):
    x = rng.uniform(size=shape)
    return x / x.sum(axis=-1, keepdims=True)


def _brute_force_rollout(layers, residual, fuse):
    """A_L @ ... @ A_1 per image, written out in the most literal way."""
    batch, _, tokens, _ = layers[0].shape
    out = np.zeros((batch, tokens, tokens))
    for b in range(batch):
        matrices = []
        for layer in layers:
            a = fuse(layer[b], axis=0)
            if residual:
                a = 0.5 * a + 0.5 * np.eye(tokens)
            matrices.append(a / a.sum(axis=1, keepdims=True))
        product = np.eye(tokens)
        for a in matrices:  # first layer first: product = A_l @ (A_{l-1} ... A_1)
            product = a @ product
        out[b] = product
    return out


# --- attention_rollout: pure NumPy -------------------------------------------------------

@pytest.mark.backend_independent
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
def test_rollout_of_identity_is_identity(residual, head_fusion):
    scores = [np.broadcast_to(np.eye(6), (2, 3, 6, 6)) for _ in range(4)]
    rollout = attention_rollout(scores, residual=residual, head_fusion=head_fusion)
    assert rollout.dtype == np.float32 and rollout.shape == (2, 6, 6)
    np.testing.assert_allclose(rollout, np.broadcast_to(np.eye(6), (2, 6, 6)), atol=1e-7)


@pytest.mark.backend_independent
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("head_fusion, fuse", [("mean", np.mean), ("max", np.max),
                                               ("min", np.min)])
def test_rollout_matches_brute_force_product(residual, head_fusion, fuse):
    rng = np.random.default_rng(0)
    layers = [_random_stochastic(rng, (2, 3, 5, 5)) for _ in range(3)]
    rollout = attention_rollout(layers, residual=residual, head_fusion=head_fusion)
    expected = _brute_force_rollout(layers, residual, fuse)
    np.testing.assert_allclose(rollout, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rollout.sum(-1), 1.0, atol=1e-5)
    # The order matters: the reversed product is a different matrix.
    assert not np.allclose(rollout, _brute_force_rollout(layers[::-1], residual, fuse))
    # One 5-D array is the same as a list of layers.
    np.testing.assert_allclose(attention_rollout(np.stack(layers), residual, head_fusion),
                               rollout, rtol=1e-6)


@pytest.mark.backend_independent
def test_rollout_bad_input():
    with pytest.raises(ValueError, match="head_fusion"):
        attention_rollout([np.ones((1, 1, 2, 2)) / 2], head_fusion="median")
    with pytest.raises(ValueError, match="scores"):
        attention_rollout(np.ones((1, 1, 2, 2)))  # 4-D array: layers axis missing
    with pytest.raises(ValueError, match="scores"):
        attention_rollout([])
    with pytest.raises(ValueError, match="layer 1"):
        attention_rollout([np.ones((1, 1, 2, 2)), np.ones((1, 1, 3, 3))])


# --- plot_attention_maps -------------------------------------------------------------------

@pytest.mark.backend_independent
@pytest.mark.parametrize("images", [
    np.random.default_rng(0).integers(0, 256, (3, 16, 24, 3)).astype("uint8"),
    np.random.default_rng(0).uniform(size=(3, 16, 24, 3)).astype("float32"),
])
def test_plot_attention_maps_png(tmp_path, images):
    maps = np.random.default_rng(1).uniform(size=(3, 4, 6))
    path = tmp_path / "sub" / "maps.png"
    out = plot_attention_maps(images, maps, path, columns=2, dpi=40, figsize=(6.0, 3.0),
                              titles=["a", "b", "c"])
    assert out == str(path)
    picture = Image.open(path)
    assert picture.format == "PNG" and picture.size == (240, 120)
    assert np.asarray(picture.convert("RGB"), "float32").std() > 0


@pytest.mark.backend_independent
def test_plot_attention_maps_default_size_and_bad_input(tmp_path):
    images = np.zeros((5, 8, 8, 3), "uint8")
    maps = np.ones((5, 2, 2))
    path = plot_attention_maps(images, maps, tmp_path / "m.png", columns=4, dpi=20)
    assert Image.open(path).size == (round(3.2 * 4 * 20), round(1.7 * 2 * 20))
    with pytest.raises(ValueError, match="maps"):
        plot_attention_maps(images, maps[:4], tmp_path / "x.png")
    with pytest.raises(ValueError, match="titles"):
        plot_attention_maps(images, maps, tmp_path / "x.png", titles=["a"])
    with pytest.raises(ValueError, match="columns"):
        plot_attention_maps(images, maps, tmp_path / "x.png", columns=0)
    with pytest.raises(ValueError, match="path"):
        plot_attention_maps(images, maps, tmp_path / "x.jpg")


# --- from models ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vit():
    keras.utils.set_random_seed(0)
    return ViTBackbone(**TINY_VIT, return_attention_scores=True)


# Every forward pass below uses batches of 2 (or the reference batch of 4): each new
# input shape costs a compilation, which dominates these tests' time.

def test_attention_scores_match_backbone_outputs(vit):
    images = random_images(batch=4, size=16)
    scores = attention_scores(vit, images, batch_size=2)
    expected = to_numpy(vit(images)["attention_scores"])
    assert len(scores) == TINY_VIT["num_layers"]
    for got, want in zip(scores, expected):
        assert got.dtype == np.float32 and got.shape == (4, 2, 17, 17)
        assert_allclose(got, want, atol=1e-5)
        np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    # A backend tensor works as well as a NumPy array.
    from_tensor = attention_scores(vit, keras.ops.convert_to_tensor(images), batch_size=2)
    assert_allclose(from_tensor[-1], scores[-1], atol=1e-6)


def test_attention_maps_rollout_and_layer(vit):
    images = random_images(batch=2, size=16, seed=1)
    scores = attention_scores(vit, images)
    maps = attention_maps(vit, images)
    assert maps.dtype == np.float32 and maps.shape == (2, 4, 4)
    expected = attention_rollout(scores)[:, 0, 1:]
    expected = expected / expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(maps.reshape(2, 16), expected, rtol=1e-4, atol=1e-6)

    last = attention_maps(vit, images, method="last")
    row = scores[-1][:, :, 0, 1:].mean(axis=1)
    np.testing.assert_allclose(last.reshape(2, 16), row / row.sum(-1, keepdims=True),
                               rtol=1e-4, atol=1e-6)
    head = attention_maps(vit, images, method="layer", layer=0, head=1)
    row = scores[0][:, 1, 0, 1:]
    np.testing.assert_allclose(head.reshape(2, 16), row / row.sum(-1, keepdims=True),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(head.sum(axis=(1, 2)), 1.0, atol=1e-5)


def test_classifier_with_preprocessing_takes_raw_pixels(vit):
    model = ViTClassifier(vit, num_classes=3, include_preprocessing=True)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3)).astype("uint8")
    scores = attention_scores(model, pixels)
    # The classifier's preprocessing maps [0, 255] to [-1, 1] (mean = std = 0.5).
    expected = attention_scores(vit, pixels.astype("float32") / 127.5 - 1.0)
    assert_allclose(scores[0], expected[0], atol=1e-5)


def test_bad_arguments(vit):
    images = random_images(batch=1, size=16)
    with pytest.raises(ValueError, match="method"):
        attention_maps(vit, images, method="flow")
    with pytest.raises(ValueError, match="layer"):
        attention_maps(vit, images, method="layer", layer=2)
    with pytest.raises(ValueError, match="head"):
        attention_maps(vit, images, method="layer", head=5)
    with pytest.raises(ValueError, match="head"):
        attention_maps(vit, images, head=0)  # rollout fuses heads
    with pytest.raises(ValueError, match="batch_size"):
        attention_scores(vit, images, batch_size=0)
    with pytest.raises(ValueError, match="images"):
        attention_scores(vit, images[0])
    with pytest.raises(TypeError, match="model"):
        attention_scores("vit", images)


def test_model_without_attention_gives_clear_error():
    model = ViTBackbone(**TINY_VIT)
    with pytest.raises(ValueError, match="return_attention_scores"):
        attention_scores(model, random_images(batch=1, size=16))
    with pytest.raises(ValueError, match="return_attention_scores"):
        attention_maps(model, random_images(batch=1, size=16))


def test_gap_model_has_no_class_token_row():
    model = ViTBackbone(**TINY_VIT, pooling="gap", class_token=False,
                        return_attention_scores=True)
    with pytest.raises(ValueError, match="GAP/MAP models have no class-token row"):
        attention_maps(model, random_images(batch=1, size=16))


def test_clip_image_tower(tmp_path):
    keras.utils.set_random_seed(0)
    model = CLIP.from_preset("clip_pico_patch4_32",
                             image_encoder={"return_attention_scores": True})
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype("uint8")
    scores = attention_scores(model, pixels)
    assert len(scores) == 4 and scores[0].shape == (2, 4, 65, 65)
    np.testing.assert_allclose(scores[-1].sum(-1), 1.0, atol=1e-5)
    maps = attention_maps(model, pixels)
    assert maps.shape == (2, 8, 8)
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, atol=1e-5)
    path = plot_attention_maps(pixels, maps, tmp_path / "clip.png", dpi=30, figsize=(4, 2))
    assert Image.open(path).size == (120, 60)
