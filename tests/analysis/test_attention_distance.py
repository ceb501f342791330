import itertools

import keras
import numpy as np
import pytest
from PIL import Image

from keras_vtx.analysis.attention_distance import (
    mean_attention_distance,
    mean_attention_distance_from_scores,
    plot_mean_attention_distance,
    uniform_attention_distance,
)
from keras_vtx.analysis.vit_attention import attention_scores
from keras_vtx.models import ViTBackbone
from tests.test_case import TINY_VIT, random_images


def _uniform_mean_distance(grid_size, patch_size):
    """Mean over all ordered patch pairs (self included) of the distance between centres."""
    (gh, gw), (ph, pw) = grid_size, patch_size
    centres = [((r + 0.5) * ph, (c + 0.5) * pw) for r in range(gh) for c in range(gw)]
    total = sum(np.hypot(a[0] - b[0], a[1] - b[1])
                for a, b in itertools.product(centres, centres))
    return total / len(centres) ** 2


def _with_prefix(patch_attention, prefix_mass):
    """Scores `(batch, heads, 1 + P, 1 + P)`: a class token taking `prefix_mass` of each row."""
    batch, heads, p, _ = patch_attention.shape
    scores = np.zeros((batch, heads, 1 + p, 1 + p))
    scores[:, :, :, 0] = prefix_mass
    scores[:, :, 1:, 1:] = (1 - prefix_mass) * patch_attention
    scores[:, :, 0, 1:] = (1 - prefix_mass) / p
    return scores


numpy_only = pytest.mark.backend_independent


@numpy_only
@pytest.mark.parametrize("grid_size, patch_size", [((3, 3), (16, 16)), ((2, 5), (4, 7)),
                                                   ((4, 1), (3, 2))])
def test_self_attention_only_gives_zero(grid_size, patch_size):
    p = grid_size[0] * grid_size[1]
    scores = [_with_prefix(np.broadcast_to(np.eye(p), (2, 3, p, p)), 0.3) for _ in range(2)]
    distances = mean_attention_distance_from_scores(scores, grid_size, patch_size)
    assert distances.dtype == np.float32 and distances.shape == (2, 3)
    np.testing.assert_array_equal(distances, 0.0)


@numpy_only
@pytest.mark.parametrize("grid_size, patch_size", [((3, 3), (16, 16)), ((2, 5), (4, 7)),
                                                   ((4, 1), (3, 2)), ((6, 4), (1.5, 8))])
@pytest.mark.parametrize("prefix", [0, 1])
def test_uniform_attention_gives_analytic_mean(grid_size, patch_size, prefix):
    p = grid_size[0] * grid_size[1]
    uniform = np.full((2, 4, p, p), 1.0 / p)
    scores = [_with_prefix(uniform, 0.6) if prefix else uniform] * 3
    distances = mean_attention_distance_from_scores(scores, grid_size, patch_size,
                                                    num_prefix_tokens=prefix)
    expected = _uniform_mean_distance(grid_size, patch_size)
    assert distances.shape == (3, 4)
    np.testing.assert_allclose(distances, expected, rtol=1e-5)
    np.testing.assert_allclose(uniform_attention_distance(grid_size, patch_size), expected,
                               rtol=1e-12)


@numpy_only
def test_heads_layers_and_images_are_kept_apart():
    # A 1x3 grid of 10-pixel-wide cells: head 0 looks at itself, head 1 at the
    # leftmost patch (distances 0, 10, 20 -> mean 10); image 1 of layer 1 looks
    # at the rightmost patch in head 0 (20, 10, 0 -> 10), averaged over images.
    self_only = np.eye(3)
    leftmost = np.tile([1.0, 0.0, 0.0], (3, 1))
    rightmost = np.tile([0.0, 0.0, 1.0], (3, 1))
    layer0 = np.stack([np.stack([self_only, leftmost])] * 2)
    layer1 = np.stack([np.stack([self_only, leftmost]), np.stack([rightmost, leftmost])])
    distances = mean_attention_distance_from_scores([layer0, layer1], (1, 3), (4, 10),
                                                    num_prefix_tokens=0)
    np.testing.assert_allclose(distances, [[0.0, 10.0], [5.0, 10.0]], rtol=1e-6)
    # A 5-D array and an int grid / patch size give the same.
    square = mean_attention_distance_from_scores(np.stack([layer0]), (1, 3), 10, 0)
    np.testing.assert_allclose(square, [[0.0, 10.0]], rtol=1e-6)


@numpy_only
def test_bad_scores():
    uniform = [np.full((1, 1, 5, 5), 0.2)]
    with pytest.raises(ValueError, match="tokens"):
        mean_attention_distance_from_scores(uniform, (3, 3), 16)
    with pytest.raises(ValueError, match="patch_size"):
        mean_attention_distance_from_scores(uniform, (2, 2), (16, -1))
    with pytest.raises(ValueError, match="grid_size"):
        mean_attention_distance_from_scores(uniform, (2, 2, 1), 16)
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        mean_attention_distance_from_scores(uniform, (2, 2), 16, num_prefix_tokens=-1)
    with pytest.raises(ValueError, match="scores"):
        mean_attention_distance_from_scores(np.full((1, 1, 5, 5), 0.2), (2, 2), 16)


@numpy_only
def test_plot_single_model_png(tmp_path):
    distances = np.random.default_rng(0).uniform(0, 120, size=(12, 16))
    path = tmp_path / "sub" / "distance.png"
    out = plot_mean_attention_distance(distances, path, labels="ViT-B/16", dpi=50,
                                       figsize=(4.0, 3.0))
    assert out == str(path)
    picture = Image.open(path)
    assert picture.format == "PNG" and picture.size == (200, 150)
    assert np.asarray(picture.convert("RGB"), "float32").std() > 0
    # The uniform-attention reference is drawn (a dashed line above every dot).
    lined = plot_mean_attention_distance(distances, tmp_path / "lined.png", labels="ViT-B/16",
                                         dpi=50, figsize=(4.0, 3.0), reference=150.0)
    assert np.abs(np.asarray(Image.open(lined).convert("RGB"), "float32")
                  - np.asarray(picture.convert("RGB"), "float32")).max() > 0


@numpy_only
def test_plot_several_models_png(tmp_path):
    rng = np.random.default_rng(1)
    distances = {"ViT-B/16": rng.uniform(0, 100, (12, 12)), "R50+ViT-B/16": rng.uniform(
        0, 100, (12, 12)), "ViT-L/16": rng.uniform(0, 100, (24, 16))}
    path = plot_mean_attention_distance(distances, tmp_path / "d.png", dpi=30)
    picture = Image.open(path)
    assert picture.size == (150, 120)
    assert np.asarray(picture.convert("RGB"), "float32").std() > 0
    path = plot_mean_attention_distance(list(distances.values())[:2], tmp_path / "l.png",
                                        labels=["a", "b"], dpi=30)
    assert Image.open(path).size == (150, 120)


@numpy_only
def test_plot_bad_input(tmp_path):
    with pytest.raises(ValueError, match="distances"):
        plot_mean_attention_distance(np.ones(4), tmp_path / "x.png")
    with pytest.raises(ValueError, match="distances"):
        plot_mean_attention_distance({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="labels"):
        plot_mean_attention_distance([np.ones((2, 2))] * 2, tmp_path / "x.png", labels=["a"])
    with pytest.raises(ValueError, match="labels"):
        plot_mean_attention_distance({"a": np.ones((2, 2))}, tmp_path / "x.png", labels="b")


# --- from models ---------------------------------------------------------------------------

def test_from_model_matches_scores_non_square():
    # A 16x24 image in 4x8 patches: a 4x3 grid, cells of 4x8 pixels.
    keras.utils.set_random_seed(0)
    config = {**TINY_VIT, "image_size": (16, 24), "patch_size": (4, 8)}
    model = ViTBackbone(**config, return_attention_scores=True)
    images = random_images(batch=4, size=(16, 24))
    distances = mean_attention_distance(model, images, batch_size=2)
    scores = attention_scores(model, images, batch_size=2)
    expected = mean_attention_distance_from_scores(scores, (4, 3), (4, 8))
    assert distances.dtype == np.float32 and distances.shape == (2, 2)
    np.testing.assert_allclose(distances, expected, rtol=1e-5)
    # Attention among 12 patches spans at most the grid's diagonal.
    assert np.all(distances > 0) and np.all(distances < np.hypot(12, 16))


@numpy_only
def test_hybrid_counts_input_pixels(monkeypatch):
    # R50+ViT-B/16 at 224: a stem of stride 16, then 1x1 patches on its 14x14 map. A grid
    # cell is 16x16 input pixels (image_size / grid_size), not one feature-map pixel.
    # A stand-in backbone with those attributes and uniform attention replaces the forward
    # pass (a hybrid compiles slowly); the known answer is the mean over centre pairs.
    from types import SimpleNamespace

    from keras_vtx.analysis import attention_distance

    hybrid = SimpleNamespace(image_size=(224, 112), grid_size=(14, 7), patch_size=(1, 1),
                             num_prefix_tokens=1)
    # Two batches (of 3 and 1 images) of 2 layers of 2 heads.
    batches = [[np.full((n, 2, 99, 99), 1 / 99, "float32")] * 2 for n in (3, 1)]

    def fake_batches(model, images, batch_size):
        assert model == "hybrid" and batch_size == 5
        return hybrid, iter(batches)

    monkeypatch.setattr(attention_distance, "_attention_batches", fake_batches)
    distances = mean_attention_distance("hybrid", None, batch_size=5)
    assert distances.shape == (2, 2)
    np.testing.assert_allclose(distances, _uniform_mean_distance((14, 7), (16, 16)),
                               rtol=1e-5)


def test_model_without_attention_gives_clear_error():
    with pytest.raises(ValueError, match="return_attention_scores"):
        mean_attention_distance(ViTBackbone(**TINY_VIT), random_images(batch=1, size=16))
