import math

import keras
import numpy as np
import pytest
from PIL import Image

from keras_vtx.analysis.embedding_sets import (
    embed_images,
    embedding_set_similarity,
    plot_embedding_set_similarity,
)
from tests.test_case import assert_allclose, to_numpy

independent = pytest.mark.backend_independent


def _brute_force(groups):
    """Loops over every pair of members: the definitions, written out."""
    def cosine(u, v):
        return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))

    names = list(groups)
    inter = np.zeros((len(names), len(names)))
    for a, name_a in enumerate(names):
        for b, name_b in enumerate(names):
            values = [cosine(u, v)
                      for i, u in enumerate(groups[name_a])
                      for j, v in enumerate(groups[name_b])
                      if a != b or i != j]
            inter[a, b] = np.mean(values) if values else math.nan
    return inter


@independent
def test_identical_members_give_intra_one_and_orthogonal_groups_inter_zero():
    same = np.tile([[3.0, 4.0, 0.0, 0.0]], (4, 1))
    orthogonal = np.array([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    result = embedding_set_similarity({"same": same, "other": orthogonal})
    assert result["names"] == ["same", "other"]
    assert result["counts"].tolist() == [4, 3]
    assert result["intra"].dtype == np.float32 and result["inter"].dtype == np.float32
    assert_allclose(result["intra"][0], 1.0, atol=1e-6)
    assert_allclose(result["inter"][0, 1], 0.0, atol=1e-7)
    assert_allclose(result["inter"][1, 0], 0.0, atol=1e-7)
    # Mean over the 3 distinct pairs: cos(e3, e4) = 0, and twice 1 / sqrt(2).
    assert_allclose(result["intra"][1], 2 / math.sqrt(2) / 3, atol=1e-6)
    assert_allclose(np.diag(result["inter"]), result["intra"])
    assert result["pairs"] == {}


@independent
def test_matches_brute_force_on_random_embeddings():
    rng = np.random.default_rng(0)
    groups = {f"g{i}": rng.standard_normal((n, 6)) + rng.standard_normal(6)
              for i, n in enumerate([5, 2, 7, 1])}
    result = embedding_set_similarity(groups)
    expected = _brute_force(groups)
    assert_allclose(result["inter"], expected, atol=1e-6)
    assert_allclose(result["inter"], result["inter"].T)
    # A group of one has no pair: NaN intra, finite inter.
    assert np.isnan(result["intra"][3]) and np.isfinite(result["inter"][3, :3]).all()
    # Cosine similarity ignores each member's scale.
    scaled = {name: values * rng.uniform(0.1, 10, (len(values), 1))
              for name, values in groups.items()}
    assert_allclose(embedding_set_similarity(scaled)["inter"], expected, atol=1e-6)


@independent
def test_pairs_give_the_inter_over_mean_intra_ratio():
    rng = np.random.default_rng(1)
    groups = {"dog": rng.standard_normal((4, 5)), "perro": rng.standard_normal((3, 5)),
              "solo": rng.standard_normal((1, 5))}
    result = embedding_set_similarity(groups, pairs=[("dog", "perro"), ["perro", "solo"]])
    inter, intra = result["inter"], result["intra"]
    assert set(result["pairs"]) == {("dog", "perro"), ("perro", "solo")}
    assert_allclose(result["pairs"][("dog", "perro")],
                    inter[0, 1] / ((intra[0] + intra[1]) / 2), rtol=1e-5)
    assert math.isnan(result["pairs"][("perro", "solo")])
    # Two sets of the same picture: the word translates perfectly, ratio 1.
    twins = embedding_set_similarity({"a": np.ones((3, 2)), "b": np.ones((2, 2))},
                                     pairs=[("a", "b")])
    assert twins["pairs"][("a", "b")] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="pairs"):
        embedding_set_similarity(groups, pairs=[("dog", "gato")])
    with pytest.raises(ValueError, match="pairs"):
        embedding_set_similarity(groups, pairs=["dog"])


@independent
@pytest.mark.parametrize("groups, match", [
    ({}, "non-empty dict"),
    ([np.ones((2, 3))], "non-empty dict"),
    ({"a": np.ones(3)}, r"\(n, D\)"),
    ({"a": np.ones((2, 3)), "b": np.ones((2, 4))}, "one size"),
    ({"a": np.zeros((0, 3))}, "empty"),
    ({"a": np.array([[1.0, 0.0], [0.0, 0.0]])}, "all-zero"),
    ({"a": np.array([[1.0, np.nan]])}, "NaN"),
])
def test_bad_groups(groups, match):
    with pytest.raises(ValueError, match=match):
        embedding_set_similarity(groups)


@independent
def test_heat_map_png(tmp_path):
    rng = np.random.default_rng(0)
    result = embedding_set_similarity({"a": rng.random((3, 4)), "b": rng.random((2, 4)),
                                       "c": rng.random((1, 4))})
    path = tmp_path / "sub" / "sets.png"
    assert plot_embedding_set_similarity(result, path, dpi=40, figsize=(5.0, 4.0)) == path
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[:2] == (160, 200) and image.std() > 0
    default = plot_embedding_set_similarity(result, tmp_path / "default.png", dpi=20)
    width, height = Image.open(default).size
    assert (width, height) == (round(20 * (2.5 + 0.8 * 3 + 1.0)), round(20 * (2.5 + 0.8 * 3)))
    with pytest.raises(ValueError, match="result"):
        plot_embedding_set_similarity({"names": ["a"]}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="shape"):
        plot_embedding_set_similarity({"names": ["a", "b"], "inter": np.eye(3)},
                                      tmp_path / "x.png")


@independent
def test_missing_matplotlib_names_the_extra(tmp_path, hide_matplotlib):
    result = embedding_set_similarity({"a": np.eye(2)})
    with pytest.raises(ImportError, match=r"keras-vtx\[plot\]"):
        plot_embedding_set_similarity(result, tmp_path / "x.png")


# --- Encoders of the package (each backend) ---


def _pixels(n, size, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


# Tests share models and batch shapes: on JAX, every new model and every new
# input shape compiles, which is most of these tests' time.
@pytest.fixture(scope="module")
def vit():
    from keras_vtx.models.vit import ViTBackbone

    return ViTBackbone(image_size=16, patch_size=4, num_layers=1, hidden_dim=16, num_heads=2,
                       mlp_dim=32)


def test_vit_backbone_and_classifier_give_the_pooled_output(vit):
    from keras_vtx.models.vit import ViTClassifier

    images = _pixels(4, 16) / 255.0
    expected = to_numpy(vit.predict_on_batch(images[:2])["pooled_output"])
    expected = np.concatenate([expected, to_numpy(
        vit.predict_on_batch(images[2:])["pooled_output"])])
    # Backend tensors in, batches of 2.
    embeddings = embed_images(vit, keras.ops.convert_to_tensor(images), batch_size=2)
    assert isinstance(embeddings, np.ndarray) and embeddings.dtype == np.float32
    assert embeddings.shape == (4, 16)
    assert_allclose(embeddings, expected, atol=1e-5)

    classifier = ViTClassifier(vit, num_classes=3, include_preprocessing=True)
    raw = _pixels(2, 16, seed=1)
    preprocessed = classifier.get_layer("preprocessing")(raw)
    assert_allclose(embed_images(classifier, raw),
                    to_numpy(vit.predict_on_batch(preprocessed)["pooled_output"]), atol=1e-5)


def test_bad_images_and_batch_size(vit):
    with pytest.raises(ValueError, match="non-empty"):
        embed_images(vit, np.zeros((0, 16, 16, 3)))
    with pytest.raises(ValueError, match="batch_size"):
        embed_images(vit, np.zeros((1, 16, 16, 3)), batch_size=0)


def test_clip_and_zero_shot_classifier_give_encode_images():
    from keras_vtx.models.clip import ZeroShotClassifier
    from tests.analysis.test_zero_shot_panel import pico_clip

    clip = pico_clip()
    images = _pixels(2, 32)
    expected = to_numpy(clip.encode_images(images))
    assert_allclose(embed_images(clip, images), expected, atol=1e-5)
    classifier = ZeroShotClassifier(clip, ["cat", "dog"], class_embeddings=np.eye(2, 128))
    assert_allclose(embed_images(classifier, images), expected, atol=1e-5)
    # Through a model: groups of images, the same numbers as from their embeddings.
    from_images = embedding_set_similarity({"a": images, "b": images[::-1]}, model=clip,
                                           batch_size=2)
    from_embeddings = embedding_set_similarity({"a": expected, "b": expected[::-1]})
    assert_allclose(from_images["inter"], from_embeddings["inter"], atol=1e-5)
    with pytest.raises(ValueError, match="one shape"):
        embedding_set_similarity({"a": images, "b": images[:, :16]}, model=clip)


def test_image_gpt_gives_middle_layer_features():
    from keras_vtx.models.igpt.image_gpt import ImageGPT
    from keras_vtx.models.igpt.image_gpt_features import layer_features

    model = ImageGPT.from_preset("igpt_tiny_test")  # 2 blocks, 16 wide, 8x8, a palette
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype("uint8")
    embeddings = embed_images(model, images)
    assert embeddings.shape == (2, 16) and embeddings.dtype == np.float32
    assert np.isfinite(embeddings).all()
    ids = to_numpy(model.palette.quantize(images))
    assert_allclose(embeddings, layer_features(model, ids, layers=[1])[1], atol=1e-5)
    # Palette ids are taken as they are; a bare backbone reads them autoregressively.
    assert_allclose(embed_images(model, ids), embeddings, atol=1e-5)
    assert_allclose(embed_images(model.backbone, ids), embeddings, atol=1e-5)
    with pytest.raises(ValueError, match="palette"):
        embed_images(model.backbone, images)


@pytest.mark.parametrize("model", [object(), keras.layers.Dense(3), None])
def test_unsupported_model(model):
    with pytest.raises(TypeError, match="ViTBackbone"):
        embed_images(model, np.zeros((1, 8, 8, 3)))
