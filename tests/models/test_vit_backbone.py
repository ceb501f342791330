import keras
import numpy as np
import pytest

from keras_vtx.layers import SineCosine2DInitializer, resample_position_embeddings
from keras_vtx.models import ViTBackbone, ViTClassifier
from tests.test_case import (
    TINY_VIT,
    assert_all_weights_get_gradients,
    assert_allclose,
    assert_keras_save_load,
    gradients,
    np_layer_norm,
    random_images,
    randomize_weights,
    to_numpy,
)


def _backbone(**overrides):
    return ViTBackbone(**{**TINY_VIT, **overrides})


def _weights_by_path(model):
    return {v.path: to_numpy(v) for v in model.weights}


@pytest.mark.parametrize("pooling", ["token", "gap", "map"])
def test_output_shapes(pooling):
    model = _backbone(pooling=pooling)
    out = model(random_images())
    assert set(out) == {"sequence_output", "pooled_output"}
    assert tuple(out["sequence_output"].shape) == (2, 17, 16)
    assert tuple(out["pooled_output"].shape) == (2, 16)
    assert model.grid_size == (4, 4) and model.num_prefix_tokens == 1


def test_pooling_semantics():
    x = random_images()
    token = _backbone(pooling="token")
    out = to_numpy(token(x))
    np.testing.assert_array_equal(out["pooled_output"], out["sequence_output"][:, 0])
    gap = _backbone(pooling="gap", class_token=False)
    out = to_numpy(gap(x))
    assert out["sequence_output"].shape == (2, 16, 16)
    np.testing.assert_allclose(out["pooled_output"], out["sequence_output"].mean(1), atol=1e-6)
    # With a class token, GAP averages the patch tokens only.
    gap = _backbone(pooling="gap")
    out = to_numpy(gap(x))
    np.testing.assert_allclose(out["pooled_output"], out["sequence_output"][:, 1:].mean(1),
                               atol=1e-6)
    map_model = _backbone(pooling="map")
    assert map_model.get_layer("map_head") is not None
    head = map_model.get_layer("map_head")
    out = to_numpy(map_model(x))
    assert_allclose(head(out["sequence_output"]), out["pooled_output"], atol=1e-5)


def test_representation_size():
    model = _backbone(representation_size=24)
    pooled = to_numpy(model(random_images(scale=3.0))["pooled_output"])
    assert pooled.shape == (2, 24)
    assert np.all(np.abs(pooled) <= 1.0)  # tanh pre-logits
    assert tuple(model.get_layer("pre_logits").kernel.shape) == (16, 24)


def test_hybrid_stem():
    model = _backbone(patch_size=1, hybrid_stem_depths=(1,), hybrid_stem_width=32)
    # stride 4 with one stage: a 16x16 image gives a 4x4 grid of 128-channel features.
    assert model.grid_size == (4, 4)
    stem = model.get_layer("hybrid_stem")
    assert tuple(model.get_layer("patch_embedding").projection.kernel.shape) == (1, 1, 128, 16)
    assert stem.depths == (1,)
    assert tuple(model(random_images())["sequence_output"].shape) == (2, 17, 16)
    with pytest.raises(ValueError, match="stem stride 4"):
        _backbone(image_size=18, patch_size=1, hybrid_stem_depths=(1,), hybrid_stem_width=32)


def test_pre_norm_and_hidden_states():
    model = _backbone(pre_norm=True, return_hidden_states=True)
    out = to_numpy(model(random_images(scale=3.0)))
    hidden = out["hidden_states"]
    assert len(hidden) == TINY_VIT["num_layers"] + 1
    assert all(h.shape == (2, 17, 16) for h in hidden)
    # The embeddings went through a fresh LayerNorm (gamma 1, beta 0); the class
    # token row is tiny (zeros + 0.02-scale position), so epsilon shows there.
    np.testing.assert_allclose(hidden[0].mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(hidden[0][:, 1:].std(-1), 1.0, atol=1e-4)
    expected = np_layer_norm(model.get_layer("final_norm"), hidden[-1])
    np.testing.assert_allclose(out["sequence_output"], expected, atol=1e-5)
    plain = _backbone(return_hidden_states=True)
    assert plain.get_layer("block_0") is not None
    with pytest.raises(ValueError):
        plain.get_layer("pre_norm")


def test_drop_path_increases_linearly():
    model = _backbone(num_layers=3, drop_path_rate=0.2)
    rates = [model.get_layer(f"block_{i}").drop_path for i in range(3)]
    np.testing.assert_allclose(rates, [0.0, 0.1, 0.2])


def test_config_round_trip():
    model = _backbone(pooling="map", representation_size=8, pre_norm=True, dropout=0.1,
                      activation="quick_gelu", image_size=(16, 12))
    config = model.get_config()
    clone = ViTBackbone.from_config(config)
    assert clone.get_config() == config
    assert [(v.path, tuple(v.shape)) for v in clone.weights] == [
        (v.path, tuple(v.shape)) for v in model.weights
    ]


@pytest.mark.parametrize("class_token", [True, False])
def test_sincos2d_position_embeddings_start_as_the_table(tmp_path, class_token):
    model = _backbone(position_embedding_init="sincos2d", class_token=class_token,
                      pooling="token" if class_token else "gap", image_size=(16, 8))
    prefix = int(class_token)
    expected = SineCosine2DInitializer(model.grid_size, prefix)(
        (prefix + model.grid_size[0] * model.grid_size[1], model.hidden_dim))
    table = model.get_layer("position_embedding").position_embeddings
    assert_allclose(table, expected, atol=0)
    assert model.get_config()["position_embedding_init"] == "sincos2d"
    # Still a learned weight, which a preset's values replace.
    assert table.trainable
    randomize_weights(model)
    model.save_to_preset(tmp_path / "preset")
    loaded = ViTBackbone.from_preset(tmp_path / "preset")
    assert loaded.position_embedding_init == "sincos2d"
    assert_allclose(loaded.get_layer("position_embedding").position_embeddings, table, atol=0)


@pytest.mark.parametrize("overrides", [{}, {"pooling": "map", "class_token": False}])
def test_keras_save_load(tmp_path, overrides):
    model = _backbone(**overrides)
    loaded = assert_keras_save_load(model, random_images(), tmp_path)
    assert isinstance(loaded, ViTBackbone)
    assert loaded.get_config() == model.get_config()


def test_preset_round_trip(tmp_path):
    model = _backbone(pooling="gap")
    x = random_images()
    model.save_to_preset(tmp_path / "preset")
    loaded = ViTBackbone.from_preset(tmp_path / "preset")
    assert isinstance(loaded, ViTBackbone)
    assert_allclose(loaded(x)["pooled_output"], model(x)["pooled_output"], atol=0)


@pytest.mark.parametrize("task", [ViTBackbone, ViTClassifier])
def test_from_preset_resamples_position_embeddings(tmp_path, task):
    model = _backbone()
    model.save_to_preset(tmp_path / "preset")
    old = _weights_by_path(model)
    loaded = task.from_preset(tmp_path / "preset", image_size=24)
    backbone = getattr(loaded, "backbone", loaded)
    assert backbone.image_size == (24, 24) and backbone.grid_size == (6, 6)
    new = _weights_by_path(backbone)
    key = "position_embedding/embeddings"
    assert new[key].shape == (1 + 36, 16)
    np.testing.assert_allclose(
        new[key], resample_position_embeddings(old[key], (4, 4), (6, 6)), atol=1e-7
    )
    np.testing.assert_array_equal(new[key][0], old[key][0])
    for path, value in old.items():
        if path != key:
            np.testing.assert_array_equal(new[path], value, err_msg=path)
    out = loaded(random_images(size=24))
    out = out["pooled_output"] if isinstance(out, dict) else out
    assert np.all(np.isfinite(to_numpy(out)))


@pytest.mark.parametrize("overrides", [{}, {"pooling": "map"}, {"pooling": "gap"},
                                       {"representation_size": 8, "pre_norm": True}])
def test_gradients_reach_every_weight(overrides):
    model = _backbone(**overrides)
    assert_all_weights_get_gradients(model, random_images())


def test_gradients_reach_every_weight_of_hybrid():
    model = _backbone(patch_size=1, hybrid_stem_depths=(1,), hybrid_stem_width=32)
    assert_all_weights_get_gradients(model, random_images())


def test_mixed_precision():
    model = _backbone(dtype="mixed_float16")
    out = model(random_images())
    assert keras.backend.standardize_dtype(out["sequence_output"].dtype) == "float16"
    assert all(v.dtype == "float32" for v in model.weights)


# --- bad input ---


def test_constructor_errors():
    with pytest.raises(ValueError, match=r"`image_size` \(18, 18\) must be divisible"):
        _backbone(image_size=18)
    with pytest.raises(ValueError, match=r"`hidden_dim` \(16\).*`num_heads` \(3\)"):
        _backbone(num_heads=3)
    with pytest.raises(ValueError, match="`pooling` must be one of.*'max'"):
        _backbone(pooling="max")
    with pytest.raises(ValueError, match="class_token=True"):
        _backbone(pooling="token", class_token=False)
    with pytest.raises(ValueError, match="image_size"):
        _backbone(image_size=(16, 16, 16))
    with pytest.raises(ValueError, match="`position_embedding_init` must be one of.*'sincos'"):
        _backbone(position_embedding_init="sincos")


def test_call_errors():
    model = _backbone()
    with pytest.raises(ValueError, match="3 channels.*received shape \\(2, 16, 16, 1\\)"):
        model(random_images(channels=1))
    with pytest.raises(ValueError, match="rank 4"):
        model(np.zeros((16, 16, 3), "float32"))
    with pytest.raises(ValueError, match="must be 16x16.*received shape \\(2, 24, 24, 3\\)"):
        model(random_images(size=24))
    with pytest.raises(TypeError, match="images"):
        model({"images": random_images()})


def test_unknown_preset_lists_close_names():
    with pytest.raises(ValueError, match="Close names: .*vit_base_patch16_224"):
        ViTBackbone.from_preset("vit_base_patch16_242")
    with pytest.raises(ValueError, match="list_presets"):
        ViTBackbone.from_preset("no_such_model")


def test_remat_keeps_outputs_and_gradients_and_round_trips():
    plain = ViTBackbone(**TINY_VIT, dropout=0.0)
    randomize_weights(plain, seed=3)
    remat = ViTBackbone(**TINY_VIT, dropout=0.0, remat=True)
    remat.set_weights(plain.get_weights())
    assert all(remat.get_layer(f"block_{i}").remat for i in range(TINY_VIT["num_layers"]))
    assert not plain.get_layer("block_0").remat
    x = random_images(batch=2)
    assert_allclose(remat(x, training=True)["pooled_output"],
                    plain(x, training=True)["pooled_output"], atol=1e-5)
    for got, want in zip(gradients(remat, x, training=True),
                         gradients(plain, x, training=True)):
        assert_allclose(got, want, atol=1e-5)
    assert remat.get_config()["remat"] is True
    assert ViTBackbone.from_config(remat.get_config()).get_layer("block_0").remat
    classifier = ViTClassifier.from_preset("vit_pico_patch4_32", num_classes=3, remat=True)
    assert classifier.backbone.remat is True
