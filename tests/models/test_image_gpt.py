import math

import keras
import numpy as np
import pytest

from keras_vtx.models.igpt.color_palette import ColorPalette
from keras_vtx.models.igpt.image_gpt import ImageGPT
from keras_vtx.models.igpt.image_gpt_backbone import ImageGPTBackbone
from keras_vtx.models.igpt.image_gpt_presets import count_parameters
from keras_vtx.models.presets import get_preset
from tests.test_case import assert_keras_save_load, randomize_weights, to_numpy

K = 16  # igpt_tiny_test: 16 colours, 8x8 images, 2 layers of width 16


def pixel_ids(batch=2, length=64, seed=0, high=K):
    return np.random.default_rng(seed).integers(0, high, (batch, length)).astype("int32")


def tiny(objective="autoregressive", **kwargs):
    model = ImageGPT.from_preset("igpt_tiny_test", objective=objective, **kwargs)
    randomize_weights(model, seed=1)
    return model


def test_autoregressive_call_shifts_in_the_start_token():
    model = tiny()
    x = pixel_ids()
    logits = model(x)
    assert tuple(logits.shape) == (2, 64, K)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    tokens = np.concatenate([np.full((2, 1), K), x[:, :-1]], axis=1).astype("int32")
    np.testing.assert_array_equal(to_numpy(model.prepare_inputs(x)[0]), tokens)
    expected = to_numpy(model.lm_head(model.backbone(tokens)))
    np.testing.assert_allclose(to_numpy(logits), expected, atol=1e-6)
    assert (model.palette_size, model.special_token_id, model.image_size) == (K, K, 8)


def test_causal_masking_and_bert_bidirectional():
    model = tiny()
    a = pixel_ids(1, seed=2)
    b = a.copy()
    j = 20
    b[0, j] = (b[0, j] + 3) % K
    changed = np.abs(to_numpy(model(a)) - to_numpy(model(b))).max(-1)[0] > 1e-6
    # Logits at i predict pixel i from pixels < i: pixel j only reaches i > j.
    assert not changed[: j + 1].any() and changed[j + 1:].all()

    bert = tiny("bert")
    mask = np.zeros((1, 64), bool)
    mask[0, 5] = True
    out_a = to_numpy(bert({"pixel_ids": a, "mask": mask})["logits"])
    out_b = to_numpy(bert({"pixel_ids": b, "mask": mask})["logits"])
    changed = np.abs(out_a - out_b).max(-1)[0] > 1e-6
    assert changed[:j].all()  # earlier positions see the later pixel


def test_bert_masking_statistics_and_inputs():
    model = tiny("bert", seed=0)
    x = pixel_ids(64)
    masks = np.stack([to_numpy(model.draw_mask(64, 64)) for _ in range(5)])
    assert masks.dtype == bool
    assert abs(masks.mean() - 0.15) < 0.015, masks.mean()
    assert masks.any(axis=-1).all()
    # Two draws differ: the seed generator advances.
    assert (masks[0] != masks[1]).any()
    # Even at a tiny rate every image has a masked position.
    rare = tiny("bert", mask_rate=0.001)
    assert to_numpy(rare.draw_mask(32, 8)).any(axis=-1).all()
    out = model(x)
    mask = to_numpy(out["mask"])
    tokens, returned = model.prepare_inputs(x, mask=mask)
    tokens = to_numpy(tokens)
    np.testing.assert_array_equal(tokens[mask], K)
    np.testing.assert_array_equal(tokens[~mask], x[~mask])
    np.testing.assert_array_equal(to_numpy(returned), mask)


def test_bert_loss_counts_masked_positions_only():
    model = tiny("bert")
    x = pixel_ids(2, seed=4)
    mask = np.zeros((2, 64), bool)
    mask[:, [3, 40]] = True
    inputs = {"pixel_ids": x, "mask": mask}
    y_pred = model(inputs)
    loss = float(to_numpy(model.compute_loss(x=inputs, y_pred=y_pred)))
    nll = to_numpy(model.token_nll(x, y_pred))
    np.testing.assert_allclose(loss, nll[mask].mean(), rtol=1e-5)
    # Changing the target of an unmasked position leaves the loss alone...
    other = x.copy()
    other[:, 10] = (other[:, 10] + 1) % K
    same = float(to_numpy(model.compute_loss(x={"pixel_ids": other, "mask": mask},
                                             y_pred=y_pred)))
    assert same == pytest.approx(loss, rel=1e-6)
    # ...changing a masked one's does not.
    other[:, 40] = (other[:, 40] + 1) % K
    moved = float(to_numpy(model.compute_loss(x={"pixel_ids": other, "mask": mask},
                                              y_pred=y_pred)))
    assert moved != pytest.approx(loss, rel=1e-4)


def test_uniform_model_has_log2k_over_3_bits_per_dim():
    model = tiny()
    model.lm_head.kernel.assign(np.zeros(model.lm_head.kernel.shape, "float32"))
    model.compile()
    result = model.evaluate(pixel_ids(8), batch_size=4, verbose=0, return_dict=True)
    assert result["bits_per_dim"] == pytest.approx(math.log2(K) / 3, rel=1e-5)
    assert result["loss"] == pytest.approx(math.log(K), rel=1e-5)


@pytest.mark.parametrize(
    "objective, policy", [("autoregressive", "float32"), ("bert", "mixed_bfloat16")]
)
def test_fit_decreases_loss_and_reports_bits_per_dim(objective, policy):
    keras.config.set_dtype_policy(policy)
    try:
        model = ImageGPT.from_preset("igpt_tiny_test", objective=objective, seed=0)
    finally:
        keras.config.set_dtype_policy("float32")
    logits = model(pixel_ids())
    logits = logits["logits"] if objective == "bert" else logits
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    if policy != "float32":
        assert model.backbone.transformer_layers[0].compute_dtype == "bfloat16"
        assert model.backbone.final_norm.compute_dtype == "float32"
    # Images of few colours: learnable in a few steps. Labels are ignored.
    x = pixel_ids(32, high=3, seed=5)
    model.compile(learning_rate=3e-3)  # XLA on TensorFlow and JAX
    history = model.fit(x, np.zeros(32, "int32"), batch_size=8, epochs=4, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))
    assert history["loss"][-1] < history["loss"][0] - 0.1, history["loss"]
    # The same forward pass (and BERT mask) gives the loss and the metric.
    np.testing.assert_allclose(history["bits_per_dim"],
                               np.array(history["loss"]) / (3 * math.log(2)), rtol=1e-4)


def test_config_keras_and_preset_round_trips(tmp_path):
    model = tiny("bert", mask_rate=0.3, seed=7)
    assert isinstance(model.palette, ColorPalette)
    config = model.get_config()
    clone = ImageGPT.from_config(config)
    assert clone.get_config() == config
    assert clone.palette == model.palette
    inputs = {"pixel_ids": pixel_ids(), "mask": pixel_ids(high=2).astype(bool)}
    loaded = assert_keras_save_load(model, inputs, tmp_path, atol=1e-6)
    assert loaded.palette == model.palette and loaded.objective == "bert"
    model.save_to_preset(str(tmp_path / "preset"))
    again = ImageGPT.from_preset(str(tmp_path / "preset"))
    assert again.palette == model.palette and again.mask_rate == 0.3
    np.testing.assert_allclose(to_numpy(again(inputs)["logits"]),
                               to_numpy(model(inputs)["logits"]), atol=1e-6)
    # Overrides: an autoregressive model from the BERT preset's weights.
    ar = ImageGPT.from_preset(str(tmp_path / "preset"), objective="autoregressive")
    assert ar.backbone.causal
    np.testing.assert_allclose(to_numpy(ar.lm_head.kernel), to_numpy(model.lm_head.kernel))


def test_presets_parameter_metadata():
    model = ImageGPT.from_preset("igpt_tiny_test")
    assert model.count_params() == get_preset("igpt_tiny_test")["metadata"]["parameters"]
    assert model.count_params() == count_parameters(17, 64, 16, 2)
    pico = get_preset("igpt_pico_shapes")["config"]["backbone"]
    assert pico["vocabulary_size"] - 1 <= 512 and pico["hidden_dim"] == 128


@pytest.mark.parametrize(
    "bad, match",
    [
        (pixel_ids(1, 65), "longer than the model's context"),
        (np.full((1, 4), K, "int32"), r"palette ids in \[0, 16\)"),
        (np.full((1, 4), -2, "int32"), r"palette ids in \[0, 16\)"),
        (np.zeros((1, 4), "float32"), "integer ids"),
        (np.zeros((4,), "int32"), "rank 2"),
        ({"pixel_ids": pixel_ids(1, 4), "mask": np.ones((1, 4), bool)}, "only taken by"),
        ({"ids": pixel_ids(1, 4)}, "'pixel_ids'"),
    ],
    ids=["too_long", "special_token", "negative", "float", "rank1", "mask_for_ar", "bad_key"],
)
def test_bad_inputs(bad, match):
    with pytest.raises(ValueError, match=match):
        tiny()(bad)


def test_bad_arguments():
    backbone = ImageGPTBackbone.from_preset("igpt_tiny_test")
    with pytest.raises(ValueError, match="causal=False"):
        ImageGPT(backbone, objective="bert")
    with pytest.raises(ValueError, match="objective"):
        ImageGPT(backbone, objective="gpt")
    with pytest.raises(ValueError, match="mask_rate"):
        ImageGPT(backbone, mask_rate=1.5)
    with pytest.raises(ValueError, match="3 colours"):
        ImageGPT(backbone, palette=np.zeros((3, 3), "float32"))
    bert = tiny("bert")
    with pytest.raises(ValueError, match="shape of `pixel_ids`"):
        bert({"pixel_ids": pixel_ids(1, 8), "mask": np.ones((1, 9), bool)})
    with pytest.raises(ValueError, match="loss"):
        bert.compile(loss="mse")


def test_generate_completes_prefix_images():
    model = tiny()
    images = model.palette.dequantize(pixel_ids(2))
    out = model.generate(prefix_images=images, prefix_rows=3, seed=0, top_k=4)
    assert out.shape == (2, 8, 8, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :3], images[:, :3])


def test_generate_errors():
    model = tiny()
    with pytest.raises(ValueError, match=r"\(batch, 8, 8, 3\)"):
        model.generate(prefix_images=np.zeros((1, 16, 16, 3), "uint8"))
    with pytest.raises(ValueError, match="autoregressive"):
        tiny("bert").generate(num_images=1)
    bare = ImageGPT(ImageGPTBackbone.from_preset("igpt_tiny_test"))
    with pytest.raises(ValueError, match="no `palette`"):
        bare.generate(num_images=1)
