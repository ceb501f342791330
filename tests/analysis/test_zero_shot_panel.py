import functools

import numpy as np
import pytest
from PIL import Image

from keras_vtx.analysis.zero_shot_panel import _true_rank, plot_zero_shot_panel, zero_shot_top_k
from tests.test_case import assert_allclose

CLASS_NAMES = ("cat", "dog", "pickup truck", "bird", "a very long class name for a prompt")


@functools.cache
def pico_clip():
    """A one-block CLIP pico, built once per session (test_embedding_sets uses it too)."""
    from keras_vtx.models.clip import CLIP

    return CLIP.from_preset("clip_pico_patch4_32", image_encoder={"num_layers": 1},
                            text_encoder={"num_layers": 1})


@pytest.fixture(scope="module")
def classifier():
    from keras_vtx.models.clip import ZeroShotClassifier

    # Class embeddings given: no tokenizer and no text encoder pass needed.
    embeddings = np.random.default_rng(0).standard_normal((len(CLASS_NAMES), 128))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return ZeroShotClassifier(pico_clip(), CLASS_NAMES, class_embeddings=embeddings)


def test_top_k_equals_sorted_predict_probabilities(classifier):
    images = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    top = zero_shot_top_k(classifier, images, k=3, batch_size=2)
    probabilities = classifier.predict_probabilities(images, batch_size=2)
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :3]
    assert top["indices"].shape == (4, 3) and top["probabilities"].dtype == np.float32
    assert top["indices"].tolist() == order.tolist()
    assert_allclose(top["probabilities"], np.sort(probabilities, axis=1)[:, ::-1][:, :3])
    assert (np.diff(top["probabilities"], axis=1) <= 0).all()
    assert top["labels"] == [[CLASS_NAMES[i] for i in row] for row in order]
    everything = zero_shot_top_k(classifier, images, k=len(CLASS_NAMES), batch_size=2)
    assert_allclose(everything["probabilities"].sum(axis=1), np.ones(4), atol=1e-5)


def test_bad_classifier_and_k(classifier):
    images = np.zeros((1, 32, 32, 3), "float32")
    with pytest.raises(TypeError, match="ZeroShotClassifier"):
        zero_shot_top_k(classifier.clip, images)
    for k in (0, len(CLASS_NAMES) + 1, True, 2.0):
        with pytest.raises(ValueError, match="`k`"):
            zero_shot_top_k(classifier, images, k=k)
    with pytest.raises(ValueError, match="images"):
        zero_shot_top_k(classifier, np.zeros((32, 32, 3)), k=2)


@pytest.mark.backend_independent
def test_true_label_rank_by_name_or_index():
    indices, labels = np.array([4, 1, 0]), ["e", "b", "a"]
    assert _true_rank("b", indices, labels) == (2, "b")
    assert _true_rank(0, indices, labels) == (3, "a")
    assert _true_rank(np.int64(4), indices, labels) == (1, "e")
    assert _true_rank("z", indices, labels) == (None, "z")
    assert _true_rank(2, indices, labels) == (None, None)
    assert _true_rank(None, indices, labels) == (None, None)
    with pytest.raises(ValueError, match="true_labels"):
        _true_rank(1.5, indices, labels)


def _top_k(count, k, seed=0):
    rng = np.random.default_rng(seed)
    probabilities = np.sort(rng.dirichlet(np.ones(6), count), axis=1)[:, ::-1][:, :k]
    indices = np.stack([rng.permutation(6)[:k] for _ in range(count)])
    labels = [[CLASS_NAMES[i % len(CLASS_NAMES)] + str(i) for i in row] for row in indices]
    return {"indices": indices, "probabilities": probabilities, "labels": labels}


@pytest.mark.backend_independent
def test_panel_png(tmp_path):
    images = np.random.default_rng(0).uniform(-1, 1, (3, 16, 16, 3))  # normalised: stretched
    top = _top_k(3, 5)
    truth = [top["labels"][0][2], int(top["indices"][1][0]), "not a class"]
    path = tmp_path / "sub" / "panel.png"
    out = plot_zero_shot_panel(images, top, path, true_labels=truth, columns=2, dpi=40,
                               figsize=(6.0, 4.0))
    assert out == path
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.shape[:2] == (160, 240) and pixels.std() > 0
    # Default size: 5 x 2.2 inches per image cell, gray uint8 images, no labels.
    gray = np.random.default_rng(1).integers(0, 256, (3, 8, 8)).astype("uint8")
    default = plot_zero_shot_panel(gray, top, tmp_path / "default.png", columns=3, dpi=20)
    assert Image.open(default).size == (round(20 * 15.0), round(20 * 2.2))


@pytest.mark.backend_independent
def test_panel_bad_input(tmp_path):
    images, top = np.zeros((2, 8, 8, 3)), _top_k(2, 3)
    path = tmp_path / "x.png"
    with pytest.raises(ValueError, match="top_k"):
        plot_zero_shot_panel(images, {"indices": top["indices"]}, path)
    with pytest.raises(ValueError, match="N=1"):
        plot_zero_shot_panel(images[:1], top, path)
    with pytest.raises(ValueError, match="true_labels"):
        plot_zero_shot_panel(images, top, path, true_labels=["cat"])
    with pytest.raises(ValueError, match="columns"):
        plot_zero_shot_panel(images, top, path, columns=0)
    with pytest.raises(ValueError, match="images"):
        plot_zero_shot_panel(np.zeros((2, 8)), top, path)
    with pytest.raises(ValueError, match=".png"):
        plot_zero_shot_panel(images, top, tmp_path / "x.jpg")
