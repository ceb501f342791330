import numpy as np
import pytest
from keras import ops

from keras_vtx.analysis import extract_layer_features, probe_image_gpt
from keras_vtx.models.igpt.image_gpt import ImageGPT
from keras_vtx.models.igpt.image_gpt_features import draw_masks, feature_model, layer_features
from tests.test_case import randomize_weights, to_numpy


def _model(objective="autoregressive"):
    return ImageGPT.from_preset("igpt_tiny_test", objective=objective)


def _ids(num_images=6, seed=0):
    return np.random.default_rng(seed).integers(0, 16, (num_images, 64)).astype("int32")


@pytest.mark.parametrize("objective", ["autoregressive", "bert"])
def test_layer_features_equal_running_the_blocks_by_hand(objective):
    model = _model(objective)
    randomize_weights(model.backbone, seed=1, scale=0.5)
    backbone = model.backbone
    ids = _ids(3)
    mask = draw_masks(3, 64, 0.3, 0) if objective == "bert" else None
    features = layer_features(model, ids, mask=mask)
    assert sorted(features) == [0, 1, 2]

    if objective == "bert":
        tokens = np.where(mask, 16, ids)
    else:
        tokens = np.concatenate([np.full((3, 1), 16), ids[:, :-1]], axis=1)
    x = backbone.token_embedding(tokens) + backbone.position_embedding(np.arange(64)[None])
    expected = {}
    for i, block in enumerate([None] + backbone.transformer_layers):
        if block is not None:
            x = block(x, is_causal=objective == "autoregressive")
        h = to_numpy(x).astype("float64")
        h = h / np.sqrt(np.mean(h**2, axis=-1, keepdims=True) + backbone.layer_norm_epsilon)
        expected[i] = h.mean(axis=1)
    for i in range(3):
        np.testing.assert_allclose(features[i], expected[i], atol=2e-5, rtol=1e-4)
    # The last layer's features are the pooled backbone output up to its norm's gain.
    final = to_numpy(backbone(ops.convert_to_tensor(tokens.astype("int32"))))
    gain = to_numpy(backbone.final_norm.scale)
    np.testing.assert_allclose(features[2], (final / gain).mean(axis=1), atol=2e-4, rtol=1e-3)
    # Layer-normalised features: zero mean across the width at each position, so pooled too.
    centred = layer_features(model, ids, layers=[1], mask=mask, normalization="layer_norm")[1]
    np.testing.assert_allclose(centred.mean(axis=1), 0.0, atol=1e-5)
    # One feature model per (backbone, layers, normalisation), reused.
    assert feature_model(backbone, [2, 0]) is feature_model(backbone, (0, 2))
    assert feature_model(backbone, [0, 2]) is not feature_model(backbone, [0, 1])


def _dominant_colour_data(num_images, seed):
    # Each image is mostly its class's colour (0..3) with 40% noise colours 4..15:
    # embedding-level pooled features are linear in the colour histogram up to
    # the per-position norm, so a linear probe separates the classes.
    rng = np.random.default_rng(seed)
    labels = np.arange(num_images) % 4
    noise = rng.integers(4, 16, (num_images, 64))
    ids = np.where(rng.random((num_images, 64)) < 0.6, labels[:, None], noise)
    return ids.astype("int32"), labels


def test_probe_reaches_known_answer_and_chance_on_shuffled_labels():
    model = _model()
    ids, labels = _dominant_colour_data(96, 0)
    batches = [(ids[i:i + 32], labels[i:i + 32]) for i in range(0, 96, 32)]
    result = probe_image_gpt(model, batches, layers=[0, 2], regularization=1e-3)
    assert result["accuracies"][0] == 1.0
    assert result["best_accuracy"] == 1.0 and result["best_layer"] in (0, 2)
    assert set(result["regularizations"]) == {0, 2}

    shuffled = np.random.default_rng(1).permutation(labels)
    test_ids, test_labels = _dominant_colour_data(64, 2)  # two batches of 32
    chance = probe_image_gpt(model, ids, test_data=test_ids, layers=[0],
                             train_labels=shuffled, test_labels=test_labels,
                             regularization=1e-3, batch_size=32)
    assert chance["accuracies"][0] < 0.5  # 4 classes: chance is 0.25


def test_mask_ensemble_is_the_mean_of_single_masks_with_the_same_seeds():
    model = _model("bert")
    randomize_weights(model.backbone, seed=2, scale=0.5)
    ids = _ids(6)
    # Two batches of 4 and 2: every mask stream is consumed across batches.
    ensemble, labels = extract_layer_features(model, ids, layers=[1, 2], num_masks=3,
                                              seed=5, batch_size=4)
    assert labels is None
    singles = [extract_layer_features(model, ids, layers=[1, 2], seed=s, batch_size=4)[0]
               for s in (5, 6, 7)]
    for layer in (1, 2):
        np.testing.assert_allclose(ensemble[layer],
                                   np.mean([s[layer] for s in singles], axis=0), atol=1e-6)
        assert not np.allclose(singles[0][layer], singles[1][layer])
    # A drawn mask is reproducible from its seed.
    a = layer_features(model, ids[:2], layers=[1], seed=3)[1]
    b = layer_features(model, ids[:2], layers=[1], mask=draw_masks(2, 64, 0.15, 3))[1]
    np.testing.assert_array_equal(a, b)

    labels = np.arange(6) % 2
    result = probe_image_gpt(model, (ids, labels), layers=[1], num_masks=2,
                             regularization=1e-2, test_split=0.5, batch_size=4)
    assert set(result["single_mask_accuracies"]) == {1}
    assert result["ensemble_gain"] == pytest.approx(
        result["best_accuracy"] - result["single_mask_accuracies"][1])


def test_draw_masks_statistics():
    mask = draw_masks(400, 64, 0.15, 0)
    assert mask.any(axis=1).all()
    assert abs(mask.mean() - 0.15) < 0.01


def test_bad_input():
    model = _model()
    ids = _ids(4)
    with pytest.raises(ValueError, match="num_masks"):
        extract_layer_features(model, ids, num_masks=2)
    with pytest.raises(ValueError, match="num_masks"):
        extract_layer_features(model, ids, num_masks=0)
    for layers in ([3], [-1], [], [True], ["1"]):
        with pytest.raises(ValueError, match="layers"):
            layer_features(model, ids, layers=layers)
    with pytest.raises(ValueError, match="train_data.*labels"):
        probe_image_gpt(model, ids, layers=[0])
    with pytest.raises(ValueError, match="test_data.*labels"):
        probe_image_gpt(model, ids, test_data=ids, train_labels=np.arange(4) % 2, layers=[0])
    with pytest.raises(ValueError, match="mask"):
        layer_features(model, ids, mask=np.zeros((4, 64), bool))
    with pytest.raises(ValueError, match="pixel_ids"):
        layer_features(model, ids + 16)
    with pytest.raises(ValueError, match="pixel_ids"):
        layer_features(model, np.zeros((1, 65), "int32"))
    with pytest.raises(ValueError, match="normalization"):
        layer_features(model, ids, normalization="batch_norm")
    with pytest.raises(ValueError, match="mask"):
        layer_features(_model("bert"), ids, mask=np.zeros((4, 63), bool))
    with pytest.raises(TypeError, match="model"):
        layer_features(model.backbone, ids)
