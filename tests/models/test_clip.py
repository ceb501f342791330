import math
import time

import keras
import numpy as np
import pytest

from keras_vtx.losses import CLIPLoss
from keras_vtx.models import ViTBackbone, get_preset
from keras_vtx.models.clip import CLIP, CLIP_MEAN, CLIP_STD, CLIPTextEncoder
from keras_vtx.models.clip.clip_presets import PARAMETER_COUNTS
from tests.test_case import (
    BACKEND,
    assert_all_weights_get_gradients,
    assert_allclose,
    gradients,
    randomize_weights,
    shapes_only,
    to_numpy,
)

VOCAB, END, START = 50, 49, 48
TINY_IMAGE = dict(image_size=16, patch_size=4, num_layers=1, hidden_dim=16, num_heads=2,
                  mlp_dim=32, pre_norm=True, patch_bias=False, activation="quick_gelu",
                  layer_norm_epsilon=1e-5)
TINY_TEXT = dict(vocabulary_size=VOCAB, context_length=8, num_layers=1, hidden_dim=16,
                 num_heads=2, mlp_dim=32, end_token_id=END)


def _clip(projection_dim=12, image=None, text=None, **kwargs):
    return CLIP(ViTBackbone(**{**TINY_IMAGE, **(image or {})}),
                CLIPTextEncoder(**{**TINY_TEXT, **(text or {})}),
                projection_dim=projection_dim, **kwargs)


def _ids(batch=3, length=8, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.zeros((batch, length), "int32")
    for i in range(batch):
        n = 1 + (i + seed) % (length - 2)
        ids[i, 0] = START
        ids[i, 1:n + 1] = rng.integers(1, START, n)
        ids[i, n + 1] = END
    return ids


def _pixels(batch=2, seed=0, size=16):
    return np.random.default_rng(seed).uniform(0, 255, (batch, size, size, 3)).astype("float32")


def _np_clip_loss(logits):
    """Symmetric cross-entropy with labels arange(n), and its gradient w.r.t. the logits."""
    logits = np.asarray(logits, "float64")
    n = logits.shape[0]

    def log_softmax(x, axis):
        x = x - x.max(axis=axis, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))

    rows, columns = log_softmax(logits, 1), log_softmax(logits, 0)
    loss = -0.5 * (np.trace(rows) + np.trace(columns)) / n
    grad = 0.5 * (np.exp(rows) - np.eye(n) + np.exp(columns) - np.eye(n)) / n
    return loss, grad


def test_outputs():
    model = _clip()
    images, ids = _pixels(2), _ids(3)
    out = to_numpy(model({"images": images, "token_ids": ids}))
    assert set(out) >= {"image_embeddings", "text_embeddings", "logits_per_image",
                        "logits_per_text", "logit_scale"}
    assert out["image_embeddings"].shape == (2, 12) and out["text_embeddings"].shape == (3, 12)
    for key, value in out.items():
        assert value.dtype == np.float32, key
    np.testing.assert_allclose(np.linalg.norm(out["image_embeddings"], axis=-1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out["text_embeddings"], axis=-1), 1, atol=1e-5)
    assert out["logit_scale"] == pytest.approx(math.log(1 / 0.07), rel=1e-6)
    expected = (1 / 0.07) * out["image_embeddings"] @ out["text_embeddings"].T
    np.testing.assert_allclose(out["logits_per_image"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["logits_per_text"], out["logits_per_image"].T)
    # The encoders on their own give the same embeddings, eagerly on NumPy input.
    assert_allclose(model.encode_images(images), out["image_embeddings"], atol=1e-6)
    assert_allclose(model.encode_text(ids), out["text_embeddings"], atol=1e-6)


def test_embeddings_are_projected_pooled_features():
    model = _clip()
    images, ids = _pixels(2), _ids(3)
    normalised = ((images / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)).astype("float32")
    pooled = to_numpy(model.image_encoder(normalised)["pooled_output"]).astype("float64")
    projected = pooled @ to_numpy(model.image_projection.kernel)
    expected = projected / np.linalg.norm(projected, axis=-1, keepdims=True)
    assert_allclose(model.encode_images(images), expected, atol=1e-5)
    pooled = to_numpy(model.text_encoder(ids)["pooled_output"]).astype("float64")
    projected = pooled @ to_numpy(model.text_projection.kernel)
    expected = projected / np.linalg.norm(projected, axis=-1, keepdims=True)
    assert_allclose(model.encode_text(ids), expected, atol=1e-5)
    # Without preprocessing the images go to the encoder as they are.
    raw = _clip(include_preprocessing=False)
    raw.set_weights(model.get_weights())
    assert_allclose(raw.encode_images(normalised), model.encode_images(images), atol=1e-5)


def test_normalisation_of_a_zero_embedding_is_finite():
    model = _clip()
    model.text_projection.kernel.assign(np.zeros((16, 12), "float32"))
    embeddings = to_numpy(model.encode_text(_ids()))
    assert np.all(embeddings == 0.0)


def test_logit_scale_gradient_matches_the_analytic_one():
    model = _clip()
    model.logit_scale.assign(1.5)
    x = {"images": _pixels(3), "token_ids": _ids(3)}

    def loss_fn(outputs, y):
        return CLIPLoss().from_embeddings(outputs["image_embeddings"],
                                          outputs["text_embeddings"], outputs["logit_scale"])

    grads = assert_all_weights_get_gradients(model, x, loss_fn=loss_fn)
    out = to_numpy(model(x))
    similarity = out["image_embeddings"].astype("float64") @ out["text_embeddings"].T
    loss, grad_logits = _np_clip_loss(math.exp(1.5) * similarity)
    # d loss / d logit_scale = sum(d loss / d logits * logits), as logits = exp(s) * sim.
    expected = float(np.sum(grad_logits * math.exp(1.5) * similarity))
    index = [v.path for v in model.trainable_variables].index(model.logit_scale.path)
    assert float(grads[index]) == pytest.approx(expected, rel=1e-4)
    assert float(to_numpy(loss_fn(out, None))) == pytest.approx(loss, rel=1e-5)


def test_logit_scale_is_clamped_in_the_forward_pass():
    model = _clip()
    model.logit_scale.assign(7.0)
    out = to_numpy(model({"images": _pixels(2), "token_ids": _ids(2)}))
    assert out["logit_scale"] == pytest.approx(math.log(100.0), rel=1e-6)
    expected = 100.0 * out["image_embeddings"] @ out["text_embeddings"].T
    np.testing.assert_allclose(out["logits_per_image"], expected, rtol=1e-5, atol=1e-5)


def test_logit_scale_stays_clamped_under_a_large_learning_rate():
    model = _clip()
    model.compile(learning_rate=10.0, warmup_steps=1, total_steps=1000)
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    optimizer.iterations.assign(1)
    model.logit_scale.assign(4.5)
    # A negative gradient makes Adam step the scale up by about the learning rate.
    # (All variables: Keras' torch AdamW fails on a list that weight decay skips.)
    variables = model.trainable_variables
    grads = [keras.ops.full(v.shape, -1.0 if v is model.logit_scale else 0.0)
             for v in variables]
    optimizer.apply_gradients(zip(grads, variables))
    assert float(to_numpy(model.logit_scale)) == pytest.approx(math.log(100.0), rel=1e-6)
    # And through fit(), with a loss that only pushes the scale up, by 100 a step.
    model.logit_scale.assign(4.5)
    data = {"images": _pixels(8), "token_ids": _ids(8)}
    model.compile(optimizer=keras.optimizers.SGD(100.0), loss=_PushScaleUp())
    history = model.fit(data, batch_size=4, epochs=2, verbose=0)
    assert float(to_numpy(model.logit_scale)) == pytest.approx(math.log(100.0), rel=1e-6)
    # The loss saw the clipped scale from the second step on.
    assert history.history["loss"][-1] == pytest.approx(-math.log(100.0), rel=1e-5)


class _PushScaleUp(keras.losses.Loss):
    def call(self, y_true, y_pred):
        return keras.ops.zeros(())

    def from_embeddings(self, image_embeddings, text_embeddings, logit_scale):
        return -logit_scale


def _pairs_dataset(n=16, batch=8):
    import tensorflow as tf

    data = {"images": _pixels(n, seed=1), "token_ids": _ids(n, seed=1)}
    return tf.data.Dataset.from_tensor_slices(data).batch(batch)


def test_fit_on_pairs_dataset_decreases_loss():
    model = _clip()
    model.compile(learning_rate=3e-3, weight_decay=0.0, warmup_steps=2, total_steps=100)
    assert isinstance(model.loss, CLIPLoss)
    history = model.fit(_pairs_dataset(), epochs=10, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses
    # evaluate() uses the same loss; predict() gives the embeddings.
    assert "loss" in model.evaluate(_pairs_dataset(), verbose=0, return_dict=True)
    predicted = model.predict(_pairs_dataset(), verbose=0)
    assert set(predicted) == {"image_embeddings", "text_embeddings"}
    assert predicted["image_embeddings"].shape == (16, 12)


def test_no_nan_in_50_mixed_precision_steps():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = _clip()
    finally:
        keras.config.set_dtype_policy("float32")
    assert {v.dtype for v in model.weights} == {"float32"}
    assert model.image_encoder.get_layer("block_0").compute_dtype == "bfloat16"
    out = model({"images": _pixels(2), "token_ids": _ids(2)})
    for key, value in out.items():
        assert keras.backend.standardize_dtype(value.dtype) == "float32", key
    model.compile(learning_rate=1e-2, warmup_steps=5, total_steps=60)
    data = {"images": _pixels(16, seed=2), "token_ids": _ids(16, seed=2)}
    history = model.fit(data, batch_size=8, epochs=25, verbose=0)  # 50 steps
    assert len(history.history["loss"]) == 25
    assert np.all(np.isfinite(history.history["loss"]))
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


def test_default_compile_and_weight_decay_exclusions():
    model = _clip()
    model.compile(learning_rate=1e-3, weight_decay=0.5, warmup_steps=10, total_steps=110)
    optimizer = model.optimizer
    assert isinstance(optimizer, keras.optimizers.AdamW)
    assert optimizer.beta_2 == pytest.approx(0.98) and optimizer.epsilon == pytest.approx(1e-6)
    lr = [float(optimizer._learning_rate(step)) for step in (0, 5, 10, 60, 110)]
    np.testing.assert_allclose(lr, [0.0, 5e-4, 1e-3, 5e-4, 0.0], atol=1e-9)
    variables = model.trainable_variables
    optimizer.build(variables)
    for v in variables:
        decayed = len(v.shape) >= 2 and "class_token" not in v.path
        assert optimizer._use_weight_decay(v) is decayed, v.path
    assert not optimizer._use_weight_decay(model.logit_scale)
    # Token and position embeddings are decayed, as in the reference implementation.
    assert optimizer._use_weight_decay(
        model.text_encoder.get_layer("token_embedding").embeddings)
    with pytest.raises(ValueError, match="total_steps"):
        model.compile(warmup_steps=10, total_steps=10)


def test_bad_inputs():
    model = _clip()
    images, ids = _pixels(2), _ids(2)
    with pytest.raises(ValueError, match="context_length"):
        model({"images": images, "token_ids": np.zeros((2, 9), "int32")})
    with pytest.raises(ValueError, match="16x16"):
        model({"images": _pixels(2, size=32), "token_ids": ids})
    with pytest.raises(ValueError, match="16x16"):
        model.encode_images(_pixels(2, size=32))
    with pytest.raises(ValueError, match="channels"):
        model.encode_images(np.zeros((2, 16, 16, 4), "float32"))
    with pytest.raises(ValueError, match="token_ids"):
        model({"images": images})
    with pytest.raises(ValueError, match="dict"):
        model(images)
    # Different numbers of images and texts: fine for the logits, not for the loss.
    out = model({"images": images, "token_ids": _ids(3)})
    assert tuple(out["logits_per_image"].shape) == (2, 3)
    model.compile()
    with pytest.raises(ValueError, match="as many texts as images"):
        model.compute_loss(y_pred=out)


def test_mismatched_batches_in_fit_are_a_clear_error():
    import tensorflow as tf

    images = tf.data.Dataset.from_tensor_slices(_pixels(8)).batch(4)
    texts = tf.data.Dataset.from_tensor_slices(_ids(9)).batch(3)
    dataset = tf.data.Dataset.zip({"images": images, "token_ids": texts})
    model = _clip()
    model.compile()
    with pytest.raises(Exception, match="as many texts as images"):
        model.fit(dataset, verbose=0)


def test_constructor_errors():
    text = CLIPTextEncoder(**TINY_TEXT)
    image = ViTBackbone(**TINY_IMAGE)
    with pytest.raises(TypeError, match="image_encoder"):
        CLIP(text, text)
    with pytest.raises(TypeError, match="text_encoder"):
        CLIP(image, image)
    with pytest.raises(ValueError, match="projection_dim"):
        CLIP(image, text, projection_dim=0)
    with pytest.raises(ValueError, match="logit_scale_init"):
        CLIP(image, text, logit_scale_init=5.0)


def _assert_same_outputs(a, b, inputs, atol=0.0):
    expected, actual = to_numpy(a(inputs)), to_numpy(b(inputs))
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], atol=atol, err_msg=key)


def test_config_round_trip():
    model = _clip(include_preprocessing=False, logit_scale_max=3.0, logit_scale_init=2.0,
                  image={"representation_size": 20})
    config = model.get_config()
    clone = CLIP.from_config(config)
    assert clone.get_config() == config
    assert [tuple(v.shape) for v in clone.weights] == [tuple(v.shape) for v in model.weights]
    assert tuple(clone.image_projection.kernel.shape) == (20, 12)


def test_keras_save_load(tmp_path):
    model = _clip()
    model.logit_scale.assign(3.0)
    path = str(tmp_path / "clip.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, CLIP) and isinstance(loaded.text_encoder, CLIPTextEncoder)
    _assert_same_outputs(model, loaded, {"images": _pixels(2), "token_ids": _ids(2)})
    assert float(to_numpy(loaded.logit_scale)) == 3.0


def test_preset_round_trip_and_overrides(tmp_path):
    model = _clip()
    model.logit_scale.assign(3.0)
    model.save_to_preset(tmp_path / "preset")
    loaded = CLIP.from_preset(tmp_path / "preset")
    inputs = {"images": _pixels(2), "token_ids": _ids(2)}
    _assert_same_outputs(model, loaded, inputs)
    # A shorter context and another image size keep every weight that fits.
    changed = CLIP.from_preset(tmp_path / "preset", image_encoder={"image_size": 24},
                               text_encoder={"context_length": 6})
    assert changed.image_encoder.image_size == (24, 24)
    assert float(to_numpy(changed.logit_scale)) == 3.0
    short = _ids(2, length=6)
    assert_allclose(changed.encode_text(short), model.encode_text(short), atol=1e-6)


def test_remat_in_both_towers_keeps_the_loss_gradients(tmp_path):
    plain = _clip()
    randomize_weights(plain, seed=4)
    plain.save_to_preset(tmp_path / "preset")
    remat = CLIP.from_preset(tmp_path / "preset", remat=True)
    assert remat.image_encoder.remat and remat.text_encoder.remat
    assert all(b.remat for b in remat.text_encoder.layers if hasattr(b, "remat"))
    assert not plain.text_encoder.remat
    assert CLIPTextEncoder.from_config(remat.text_encoder.get_config()).remat
    inputs = {"images": _pixels(3), "token_ids": _ids(3)}

    def loss(outputs, _):
        return CLIPLoss().from_embeddings(outputs["image_embeddings"],
                                          outputs["text_embeddings"], outputs["logit_scale"])

    for got, want in zip(gradients(remat, inputs, loss_fn=loss, training=True),
                         gradients(plain, inputs, loss_fn=loss, training=True)):
        assert_allclose(got, want, atol=1e-5)
    named = CLIP.from_preset("clip_pico_patch4_32", remat=True,
                             text_encoder={"remat": False})
    assert named.image_encoder.remat and not named.text_encoder.remat


def test_named_presets():
    names = ("clip_vit_base_patch32", "clip_vit_base_patch16", "clip_vit_large_patch14",
             "clip_vit_large_patch14_336", "clip_pico_patch4_32")
    for name in names:
        entry = get_preset(name)
        assert entry["class_name"] == "CLIP" and entry["description"]
    config = get_preset("clip_vit_large_patch14_336")["config"]
    assert config["image_encoder"]["image_size"] == 336
    assert config["text_encoder"]["context_length"] == 77
    with shapes_only():  # built and called symbolically: the forward pass is tested above
        model = CLIP.from_preset("clip_pico_patch4_32", image_encoder={"num_layers": 1},
                                 text_encoder={"num_layers": 1})
        out = model.compute_output_spec({"images": keras.KerasTensor((2, 32, 32, 3)),
                                         "token_ids": keras.KerasTensor((2, 77), "int32")})
    assert model.image_encoder.image_size == (32, 32) and model.projection_dim == 128
    assert model.text_encoder.vocabulary_size == 49408
    assert model.image_encoder.num_layers == model.text_encoder.num_layers == 1
    assert tuple(out["logits_per_image"].shape) == (2, 2)


@pytest.mark.slow
# A parameter count does not depend on the backend: built once, in the tensorflow session.
@pytest.mark.only_backend("tensorflow")
@pytest.mark.parametrize("name", sorted(PARAMETER_COUNTS))
def test_parameter_counts_match_transformers(name):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = get_preset(name)["config"]
    image, text = config["image_encoder"], config["text_encoder"]
    hf_config = transformers.CLIPConfig(
        vision_config=dict(hidden_size=image["hidden_dim"], num_hidden_layers=image["num_layers"],
                           intermediate_size=image["mlp_dim"],
                           num_attention_heads=image["num_heads"],
                           image_size=image["image_size"], patch_size=image["patch_size"]),
        text_config=dict(hidden_size=text["hidden_dim"], num_hidden_layers=text["num_layers"],
                         intermediate_size=text["mlp_dim"], num_attention_heads=text["num_heads"],
                         vocab_size=text["vocabulary_size"],
                         max_position_embeddings=text["context_length"]),
        projection_dim=config["projection_dim"],
    )
    with torch.device("meta"):  # shapes only
        reference = transformers.CLIPModel(hf_config)
    expected = sum(p.numel() for p in reference.parameters())
    assert expected == PARAMETER_COUNTS[name]
    start = time.time()
    with shapes_only():
        model = CLIP.from_preset(name)
    print(f"{BACKEND}: built {name} in {time.time() - start:.1f} s")
    assert model.count_params() == expected
    # Every variable has its counterpart in a transformers checkpoint.
    assert len(model.weights) == len(list(reference.parameters()))

