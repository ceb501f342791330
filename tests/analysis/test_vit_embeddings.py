import numpy as np
import pytest
from PIL import Image

from keras_vtx.analysis.vit_embeddings import (
    patch_embedding_components,
    plot_patch_embedding_components,
    plot_position_embedding_similarity,
    position_embedding_similarity,
)
from keras_vtx.models.vit import ViTBackbone, ViTClassifier
from tests.test_case import TINY_VIT, to_numpy

FREQUENCIES = np.array([0.3, 0.7, 1.1, 1.6])  # All below 2 * pi / 5: no aliasing on a grid <= 6.


def _sinusoidal_table(grid, width):
    """2-D sinusoidal position embeddings: half the channels encode the row, half the column.

    Each half holds sin and cos of the coordinate at several frequencies, so
    every row has the same norm and `cos_sim(p, q)` is the mean over
    frequencies and both axes of `cos(w * (p - q))`: 1 at `p == q`, smaller
    elsewhere.
    """
    gh, gw = grid
    rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    rows, cols = rows.ravel()[:, None], cols.ravel()[:, None]
    k = width // 4
    w = FREQUENCIES[:k]
    table = np.concatenate(
        [np.sin(rows * w), np.cos(rows * w), np.sin(cols * w), np.cos(cols * w)], axis=1
    )
    return table.astype("float32"), w


def _expected_similarity(grid, w):
    gh, gw = grid
    dr = np.arange(gh)[:, None, None, None] - np.arange(gh)[None, None, :, None]
    dc = np.arange(gw)[None, :, None, None] - np.arange(gw)[None, None, None, :]
    return (np.cos(dr[..., None] * w).sum(-1) + np.cos(dc[..., None] * w).sum(-1)) / (2 * len(w))


def _check_peaked(sim, grid):
    gh, gw = grid
    assert sim.shape == (gh, gw, gh, gw) and sim.dtype == np.float32
    for i in range(gh):
        for j in range(gw):
            assert np.unravel_index(np.argmax(sim[i, j]), (gh, gw)) == (i, j)
            np.testing.assert_allclose(sim[i, j, i, j], 1.0, atol=1e-6)


def _kernel_variable(model):
    (kernel,) = [w for w in model.get_layer("patch_embedding").weights
                 if w.path.endswith("kernel")]
    return kernel


def _png_ok(path, size):
    image = Image.open(path)
    assert image.format == "PNG" and image.size == size
    assert np.asarray(image.convert("L"), "float32").std() > 0


# === Position-embedding similarity ===


@pytest.mark.backend_independent
@pytest.mark.parametrize("prefix", [0, 1])
def test_sinusoidal_embeddings_give_peaked_similarity(prefix):
    grid = (4, 6)
    table, w = _sinusoidal_table(grid, 16)
    table = np.concatenate([np.full((prefix, 16), 7.0, "float32"), table])
    sim = position_embedding_similarity(embeddings=table, grid_size=grid,
                                        num_prefix_tokens=prefix)
    _check_peaked(sim, grid)
    np.testing.assert_allclose(sim, _expected_similarity(grid, w), atol=1e-5)
    np.testing.assert_allclose(sim, sim.transpose(2, 3, 0, 1), atol=1e-6)


@pytest.mark.parametrize("class_token", [True, False])
def test_sinusoidal_embeddings_through_a_vit(class_token):
    config = dict(TINY_VIT, image_size=(16, 24), num_layers=1)
    if not class_token:
        config.update(class_token=False, pooling="gap")
    model = ViTBackbone(**config)
    assert model.grid_size == (4, 6)
    table, w = _sinusoidal_table(model.grid_size, 16)
    layer = model.get_layer("position_embedding")
    prefix_rows = np.full((model.num_prefix_tokens, 16), -3.0, "float32")
    layer.position_embeddings.assign(np.concatenate([prefix_rows, table]))
    # Through a task model too: resolve_vit finds the backbone inside.
    sources = [model, ViTClassifier(backbone=model, num_classes=3)] if class_token else [model]
    for source in sources:
        sim = position_embedding_similarity(source)
        _check_peaked(sim, (4, 6))
        np.testing.assert_allclose(sim, _expected_similarity((4, 6), w), atol=1e-5)


@pytest.mark.backend_independent
def test_position_similarity_bad_arguments():
    table = np.ones((5, 4), "float32")
    with pytest.raises(ValueError, match="exactly one of `model`"):
        position_embedding_similarity()
    with pytest.raises(ValueError, match="`grid_size`"):
        position_embedding_similarity(embeddings=table)
    with pytest.raises(ValueError, match=r"\(4, D\).*received shape \(5, 4\)"):
        position_embedding_similarity(embeddings=table, grid_size=2)
    with pytest.raises(ValueError, match="`grid_size`"):
        position_embedding_similarity(embeddings=table, grid_size=(2, 0))
    with pytest.raises(ValueError, match="`num_prefix_tokens`"):
        position_embedding_similarity(embeddings=table, grid_size=2, num_prefix_tokens=-1)
    with pytest.raises(ValueError, match="NaN"):
        position_embedding_similarity(embeddings=np.full((4, 3), np.nan), grid_size=2)
    with pytest.raises(TypeError, match="`model` must be a ViTBackbone"):
        position_embedding_similarity("vit")
    # A zero row is similar to nothing (no NaN).
    table = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    sim = position_embedding_similarity(embeddings=table, grid_size=2)
    assert np.isfinite(sim).all() and sim[0, 1, 0, 1] == 0.0


def test_position_similarity_model_and_embeddings_exclusive():
    model = ViTBackbone(**TINY_VIT)
    with pytest.raises(ValueError, match="exactly one"):
        position_embedding_similarity(model, embeddings=np.ones((17, 16)))
    with pytest.raises(ValueError, match="`grid_size`"):
        position_embedding_similarity(model, grid_size=4)


# === Patch-embedding components ===


def _reference_pca(kernel):
    """Eigen-decomposition of the covariance of the D filters (samples) in R^(ph*pw*C)."""
    filters = kernel.reshape(-1, kernel.shape[-1]).T.astype("float64")
    values, vectors = np.linalg.eigh(np.cov(filters, rowvar=False))
    order = np.argsort(values)[::-1]
    return vectors[:, order].T, values[order] / values.sum(), filters.mean(0)


def _check_against_reference(result, kernel, n):
    directions, ratios, mean = _reference_pca(kernel)
    ph, pw, channels, _ = kernel.shape
    components = result["components"]
    assert components.shape == (n, ph, pw, channels) and components.dtype == np.float32
    flat = components.reshape(n, -1)
    for k in range(n):
        # Up to sign; the chosen sign makes the largest-|value| entry positive.
        sign = np.sign(flat[k] @ directions[k])
        np.testing.assert_allclose(flat[k], sign * directions[k], atol=1e-4)
        assert flat[k][np.argmax(np.abs(flat[k]))] > 0
    np.testing.assert_allclose(result["explained_variance_ratio"], ratios[:n], atol=1e-5)
    np.testing.assert_allclose(result["mean"], mean.reshape(ph, pw, channels), atol=1e-6)


def test_components_match_reference_pca():
    model = ViTBackbone(**dict(TINY_VIT, patch_size=2, image_size=8, hidden_dim=32))
    kernel = to_numpy(_kernel_variable(model))
    assert kernel.shape == (2, 2, 3, 32)
    result = patch_embedding_components(model, num_components=6)
    _check_against_reference(result, kernel, 6)
    # n is capped by the filter dimension ph * pw * C = 12 (and by D = 32).
    assert patch_embedding_components(model, num_components=50)["components"].shape[0] == 12


@pytest.mark.backend_independent
def test_components_match_sklearn_pca():
    from sklearn.decomposition import PCA

    model = ViTBackbone(**TINY_VIT)
    kernel = to_numpy(_kernel_variable(model))
    result = patch_embedding_components(model, num_components=5)
    _check_against_reference(result, kernel, 5)
    pca = PCA(n_components=5).fit(kernel.reshape(-1, 16).T)
    for k in range(5):
        flat = result["components"][k].ravel()
        np.testing.assert_allclose(np.abs(flat @ pca.components_[k]), 1.0, atol=1e-4)
    np.testing.assert_allclose(result["explained_variance_ratio"],
                               pca.explained_variance_ratio_, atol=1e-5)


def test_one_dominant_direction_is_component_zero():
    model = ViTBackbone(**TINY_VIT)
    rng = np.random.default_rng(1)
    direction = rng.normal(size=(4, 4, 3))
    direction /= np.linalg.norm(direction)
    # D = 16 filters: a common offset, large multiples of one direction, tiny noise.
    scales = rng.normal(size=16) * 10.0
    kernel = 0.5 + direction[..., None] * scales + 1e-4 * rng.normal(size=(4, 4, 3, 16))
    _kernel_variable(model).assign(kernel.astype("float32"))
    result = patch_embedding_components(model, num_components=3)
    top = result["components"][0]
    np.testing.assert_allclose(np.abs(np.sum(top * direction)), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(top), 1.0, atol=1e-5)
    assert result["explained_variance_ratio"][0] > 0.999999
    assert result["explained_variance_ratio"].shape == (3,)


def test_components_bad_arguments():
    model = ViTBackbone(**TINY_VIT)
    with pytest.raises(ValueError, match="`num_components` must be at least 1; received 0"):
        patch_embedding_components(model, num_components=0)
    with pytest.raises(TypeError, match="`num_components` must be an int"):
        patch_embedding_components(model, num_components=2.5)
    with pytest.raises(TypeError, match="`model` must be a ViTBackbone"):
        patch_embedding_components(np.zeros((4, 4, 3, 8)))
    _kernel_variable(model).assign(np.ones((4, 4, 3, 16), "float32"))
    with pytest.raises(ValueError, match="zero variance"):
        patch_embedding_components(model)


def test_hybrid_vit_is_refused():
    model = ViTBackbone(**dict(TINY_VIT, patch_size=1, num_layers=1, hybrid_stem_depths=(1,),
                               hybrid_stem_width=32))
    with pytest.raises(ValueError, match="hybrid ViT.*not RGB pixels"):
        patch_embedding_components(model)
    # Position embeddings of a hybrid are still a grid: that analysis works.
    assert position_embedding_similarity(model).shape == (4, 4, 4, 4)


# === PNG writers ===


@pytest.mark.backend_independent
def test_components_png(tmp_path):
    rng = np.random.default_rng(0)
    result = {"components": rng.normal(size=(10, 4, 4, 3)).astype("float32")}
    path = tmp_path / "sub" / "components.png"
    assert plot_patch_embedding_components(result, path, columns=4, dpi=50,
                                           figsize=(4.0, 3.0)) == str(path)
    _png_ok(path, (200, 150))
    # Gray tiles (other channel counts), the array form and the default figure size.
    gray = plot_patch_embedding_components(rng.normal(size=(3, 2, 2, 2)), tmp_path / "g.png")
    _png_ok(gray, (300, 140))


@pytest.mark.backend_independent
def test_components_png_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="`components` must be an array"):
        plot_patch_embedding_components(np.zeros((4, 4, 3)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="\"components\""):
        plot_patch_embedding_components({"mean": np.zeros((4, 4, 3))}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="`columns`"):
        plot_patch_embedding_components(np.zeros((2, 4, 4, 3)), tmp_path / "x.png", columns=0)
    with pytest.raises(ValueError, match="`path`"):
        plot_patch_embedding_components(np.zeros((2, 4, 4, 3)), tmp_path / "x.jpg")


@pytest.mark.backend_independent
def test_similarity_png(tmp_path):
    table, _ = _sinusoidal_table((3, 4), 16)
    sim = position_embedding_similarity(embeddings=table, grid_size=(3, 4))
    path = tmp_path / "similarity.png"
    assert plot_position_embedding_similarity(sim, path, dpi=40, figsize=(5.0, 4.0)) == str(path)
    _png_ok(path, (200, 160))
    with pytest.raises(ValueError, match="`similarity` must be an array"):
        plot_position_embedding_similarity(sim[0], tmp_path / "x.png")
    with pytest.raises(ValueError, match="`figsize`"):
        plot_position_embedding_similarity(sim, tmp_path / "x.png", figsize=(0, 1))
