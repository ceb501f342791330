import keras
import numpy as np
import pytest

from keras_vtx.metrics import RetrievalRecall, retrieval_recall
from tests.test_case import to_numpy


def _brute_force(images, texts, text_to_image, ks, normalize=True):
    """Sort every query's candidates (stable, so ties keep index order) and look for a match."""
    images = np.asarray(images, "float64")
    texts = np.asarray(texts, "float64")
    if normalize:
        images = images / np.linalg.norm(images, axis=1, keepdims=True)
        texts = texts / np.linalg.norm(texts, axis=1, keepdims=True)
    scores = images @ texts.T
    results = {}
    i2t, t2i = [], []
    for i in range(len(images)):
        order = np.argsort(-scores[i], kind="stable")
        i2t.append(min(np.flatnonzero(text_to_image[order] == i)))
    for t in range(len(texts)):
        order = np.argsort(-scores[:, t], kind="stable")
        t2i.append(int(np.flatnonzero(order == text_to_image[t])[0]))
    for name, ranks in (("image_to_text", i2t), ("text_to_image", t2i)):
        for k in ks:
            results[f"{name}_recall@{k}"] = float(np.mean(np.array(ranks) < k))
    return results


def test_matches_brute_force_with_several_captions_per_image():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((30, 8))
    text_to_image = rng.permutation(np.repeat(np.arange(30), [1, 2, 3, 5, 5, 4] * 5))
    # Captions near their image, so the recalls are neither 0 nor 1.
    texts = images[text_to_image] + 1.2 * rng.standard_normal((len(text_to_image), 8))
    ks = (1, 5, 10)
    expected = _brute_force(images, texts, text_to_image, ks)
    actual = retrieval_recall(images, texts, text_to_image, ks=ks, batch_size=7)
    assert actual == expected
    assert 0 < actual["image_to_text_recall@1"] < actual["image_to_text_recall@10"] < 1
    assert 0 < actual["text_to_image_recall@1"] < actual["text_to_image_recall@10"] < 1


def test_ties_are_ranked_by_index():
    rng = np.random.default_rng(1)
    # Few distinct integer vectors: most similarities tie.
    images = rng.integers(-1, 2, (25, 3)).astype("float32")
    images[np.abs(images).sum(1) == 0] = 1.0
    text_to_image = np.concatenate([np.arange(25), rng.integers(0, 25, 15)])
    texts = rng.integers(-1, 2, (40, 3)).astype("float32")
    texts[np.abs(texts).sum(1) == 0] = 1.0
    for normalize in (True, False):
        expected = _brute_force(images, texts, text_to_image, (1, 3, 7), normalize)
        actual = retrieval_recall(images, texts, text_to_image, ks=(1, 3, 7),
                                  normalize=normalize, batch_size=4)
        assert actual == expected
    # All-equal similarities: only the first candidate counts at k=1.
    images, texts = np.ones((4, 2)), np.ones((4, 2))
    recall = retrieval_recall(images, texts, ks=(1, 2))
    assert recall["image_to_text_recall@1"] == 0.25
    assert recall["text_to_image_recall@2"] == 0.5


def test_one_caption_per_image_default_and_perfect_retrieval():
    embeddings = np.eye(6)
    recall = retrieval_recall(embeddings, embeddings + 0.1, ks=[1])
    assert recall == {"image_to_text_recall@1": 1.0, "text_to_image_recall@1": 1.0}


def test_in_batch_metric_matches_the_function():
    rng = np.random.default_rng(2)
    metrics = {(d, k): RetrievalRecall(k, d) for d in ("image_to_text", "text_to_image")
               for k in (1, 2)}
    all_hits = {key: [] for key in metrics}
    for _ in range(3):
        # Integer logits: ties included.
        logits = rng.integers(0, 4, (5, 5)).astype("float32")
        images, texts = np.eye(5), logits.T  # images one-hot: image i's scores = row i
        reference = retrieval_recall(images, texts, ks=(1, 2), normalize=False)
        for (direction, k), metric in metrics.items():
            metric.update_state(None, keras.ops.convert_to_tensor(logits))
            all_hits[(direction, k)].append(reference[f"{direction}_recall@{k}"])
    for key, metric in metrics.items():
        assert metric.name == f"{key[0]}_recall@{key[1]}"
        np.testing.assert_allclose(to_numpy(metric.result()), np.mean(all_hits[key]), atol=1e-6)
    metric = metrics[("image_to_text", 1)]
    metric.reset_state()
    metric.update_state(None, {"logits_per_image": np.array([[2.0, 1.0], [0.0, 1.0]])},
                        sample_weight=np.array([1.0, 3.0]))
    np.testing.assert_allclose(to_numpy(metric.result()), 1.0)
    metric.update_state(None, np.array([[1.0, 2.0], [0.0, 1.0]]), sample_weight=[3.0, 1.0])
    np.testing.assert_allclose(to_numpy(metric.result()), 5.0 / 8.0)
    clone = RetrievalRecall.from_config(metric.get_config())
    assert clone.get_config() == metric.get_config()


def test_metric_in_compile_and_evaluate():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(4, use_bias=False)(inputs))
    model.compile(loss="mse", metrics=[RetrievalRecall(1), RetrievalRecall(2, "text_to_image")])
    x = np.random.default_rng(3).standard_normal((8, 4)).astype("float32")
    results = model.evaluate(x, np.zeros((8, 4)), batch_size=4, verbose=0, return_dict=True)
    logits = to_numpy(model.predict(x, batch_size=4, verbose=0))
    expected = {"image_to_text_recall@1": [], "text_to_image_recall@2": []}
    for batch in (logits[:4], logits[4:]):
        r = retrieval_recall(np.eye(4), batch.T, ks=(1, 2), normalize=False)
        for key in expected:
            expected[key].append(r[key])
    for key, values in expected.items():
        np.testing.assert_allclose(results[key], np.mean(values), atol=1e-6)


def test_bad_inputs():
    images, texts = np.ones((3, 4)), np.ones((4, 4))
    with pytest.raises(ValueError, match="counts must match.*3 images and 4 texts"):
        retrieval_recall(images, texts)
    with pytest.raises(ValueError, match="same width"):
        retrieval_recall(images, np.ones((3, 5)))
    with pytest.raises(ValueError, match=r"`text_to_image` must be 4 ints in \[0, 3\)"):
        retrieval_recall(images, texts, text_to_image=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="text_to_image"):
        retrieval_recall(images, texts, text_to_image=[0.0, 1.0, 2.0, 2.0])
    with pytest.raises(ValueError, match=r"images \[2\] have none"):
        retrieval_recall(images, texts, text_to_image=[0, 1, 1, 0])
    with pytest.raises(ValueError, match="ks"):
        retrieval_recall(images, images, ks=(1, 0))
    with pytest.raises(ValueError, match="image_embeddings.*finite"):
        retrieval_recall(np.full((3, 4), np.nan), images)
    with pytest.raises(ValueError, match="text_embeddings.*2-D"):
        retrieval_recall(images, np.ones(4))
    with pytest.raises(ValueError, match="`k`"):
        RetrievalRecall(0)
    with pytest.raises(ValueError, match="direction"):
        RetrievalRecall(1, "both")
    with pytest.raises(ValueError, match="square"):
        RetrievalRecall(1).update_state(None, np.ones((2, 3)))
