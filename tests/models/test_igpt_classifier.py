import numpy as np
import pytest

from keras_vtx.models.igpt.image_gpt import ImageGPT
from keras_vtx.models.igpt.image_gpt_backbone import ImageGPTBackbone
from keras_vtx.models.igpt.image_gpt_classifier import ImageGPTClassifier
from keras_vtx.models.igpt.image_gpt_features import draw_masks
from tests.test_case import assert_keras_save_load, randomize_weights, to_numpy


def _data(num_images=16, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(num_images) % 3
    ids = np.where(rng.random((num_images, 64)) < 0.6, labels[:, None],
                   rng.integers(3, 16, (num_images, 64)))
    return ids.astype("int32"), labels.astype("int32")


def _np_nll(logits, ids, mask=None):
    logits = np.asarray(logits, "float64")
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs = log_probs - np.log(np.exp(log_probs).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, ids[..., None], axis=-1)[..., 0]
    return nll.mean() if mask is None else nll[mask].mean()


def _np_softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_fit_decreases_loss():
    model = ImageGPTClassifier.from_preset("igpt_tiny_test", num_classes=3,
                                           generative_loss_weight=0.1)
    model.compile(learning_rate=3e-3)
    ids, labels = _data()
    history = model.fit(ids, labels, batch_size=8, epochs=3, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    assert "accuracy" in history


def test_generative_loss_adds_weight_times_nll():
    generator = ImageGPT.from_preset("igpt_tiny_test")
    randomize_weights(generator, seed=0, scale=0.3)
    with_aux = ImageGPTClassifier.from_generator(generator, 3, generative_loss_weight=0.5)
    plain = ImageGPTClassifier.from_generator(generator, 3)
    for a, b in zip(with_aux.classifier_head.weights, plain.classifier_head.weights):
        b.assign(to_numpy(a))
    ids, labels = _data(8)
    losses = []
    for model in (with_aux, plain):
        model.compile()
        losses.append(model.evaluate(ids, labels, batch_size=8, verbose=0, return_dict=True)
                      ["loss"])
    nll = _np_nll(to_numpy(generator(ids)), ids)
    np.testing.assert_allclose(losses[0] - losses[1], 0.5 * nll, rtol=1e-4, atol=1e-5)


def test_bert_generative_loss_on_masked_positions_only():
    generator = ImageGPT.from_preset("igpt_tiny_test", objective="bert")
    randomize_weights(generator, seed=1, scale=0.3)
    model = ImageGPTClassifier.from_generator(generator, 2, generative_loss_weight=2.0)
    assert model.objective == "bert" and not model.backbone.causal
    ids, _ = _data(4)
    mask = draw_masks(4, 64, 0.15, 0)
    model({"pixel_ids": ids, "mask": mask})
    logits = generator({"pixel_ids": ids, "mask": mask})["logits"]
    np.testing.assert_allclose(to_numpy(model.losses[0]), 2.0 * _np_nll(to_numpy(logits), ids,
                                                                         mask), rtol=1e-4)


def test_from_generator_copies_weights():
    generator = ImageGPT.from_preset("igpt_tiny_test")
    randomize_weights(generator, seed=2)
    model = ImageGPTClassifier.from_generator(generator, 4, generative_loss_weight=1.0,
                                              class_names=["a", "b", "c", "d"])
    assert model.backbone is not generator.backbone
    for a, b in zip(model.backbone.weights, generator.backbone.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    np.testing.assert_array_equal(to_numpy(model.lm_head.kernel),
                                  to_numpy(generator.lm_head.kernel))
    assert model.palette == generator.palette
    with pytest.raises(TypeError, match="generator"):
        ImageGPTClassifier.from_generator(generator.backbone, 4)


def test_predict_ensemble_averages_single_masks():
    model = ImageGPTClassifier.from_preset("igpt_tiny_test", objective="bert", num_classes=3)
    randomize_weights(model, seed=3, scale=0.5)
    ids, labels = _data(6)
    ensemble, single = model.predict_ensemble(ids, num_masks=3, seed=4, return_single=True)
    per_mask = [
        _np_softmax(model.predict({"pixel_ids": ids, "mask": draw_masks(6, 64, 0.15, s)},
                                  verbose=0))
        for s in (4, 5, 6)
    ]
    np.testing.assert_allclose(ensemble, np.mean(per_mask, axis=0), atol=1e-5)
    np.testing.assert_allclose(single, per_mask[0], atol=1e-5)
    result = model.evaluate_ensemble(ids, labels, num_masks=3, seed=4)
    assert result["gain"] == pytest.approx(
        result["ensemble_accuracy"] - result["single_mask_accuracy"])
    assert result["ensemble_accuracy"] == np.mean(ensemble.argmax(1) == labels)
    # Masks are drawn at every call unless given.
    drawn = [model.predict(ids, verbose=0) for _ in range(2)]
    assert not np.allclose(drawn[0], drawn[1])


def test_round_trips(tmp_path):
    model = ImageGPTClassifier.from_preset(
        "igpt_tiny_test", num_classes=3, generative_loss_weight=0.5, dropout=0.1,
        class_names=["x", "y", "z"])
    randomize_weights(model, seed=5)
    config = model.get_config()
    clone = ImageGPTClassifier.from_config(config)
    assert clone.get_config() == config
    ids, _ = _data(4)
    assert_keras_save_load(model, ids, tmp_path, atol=1e-6)
    model.save_to_preset(str(tmp_path / "preset"))
    loaded = ImageGPTClassifier.from_preset(str(tmp_path / "preset"))
    np.testing.assert_allclose(to_numpy(loaded(ids)), to_numpy(model(ids)), atol=1e-6)
    assert loaded.class_names == ("x", "y", "z") and loaded.palette == model.palette

    # An ImageGPT preset gives a fresh head on the generator's backbone.
    generator = ImageGPT.from_preset("igpt_tiny_test")
    randomize_weights(generator, seed=6)
    generator.save_to_preset(str(tmp_path / "generator"))
    fresh = ImageGPTClassifier.from_preset(str(tmp_path / "generator"), num_classes=5)
    assert fresh.num_classes == 5 and fresh.lm_head is None
    for a, b in zip(fresh.backbone.weights, generator.backbone.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_bad_input():
    ids, _ = _data(2)
    with pytest.raises(ValueError, match="num_classes"):
        ImageGPTClassifier.from_preset("igpt_tiny_test")
    with pytest.raises(ValueError, match="num_classes"):
        ImageGPTClassifier.from_preset("igpt_tiny_test", num_classes=0)
    causal = ImageGPTBackbone(vocabulary_size=17, sequence_length=64, hidden_dim=8,
                              num_layers=1, num_heads=2)
    with pytest.raises(ValueError, match="causal"):
        ImageGPTClassifier(causal, 3, objective="bert")
    with pytest.raises(ValueError, match="objective"):
        ImageGPTClassifier(causal, 3, objective="mae")
    with pytest.raises(ValueError, match="palette"):
        ImageGPTClassifier(causal, 3, palette=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="class_names"):
        ImageGPTClassifier(causal, 3, class_names=["a"])
    model = ImageGPTClassifier(causal, 3)
    with pytest.raises(ValueError, match="mask"):
        model({"pixel_ids": ids, "mask": np.zeros_like(ids, bool)})
    with pytest.raises(ValueError, match="pixel_ids"):
        model(ids + 16)
    with pytest.raises(ValueError, match="pixel_ids"):
        model(np.zeros((1, 65), "int32"))
    with pytest.raises(ValueError, match="BERT"):
        model.predict_ensemble(ids, num_masks=2)
