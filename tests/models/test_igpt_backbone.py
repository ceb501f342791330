import keras
import numpy as np
import pytest

from keras_vtx.models.igpt.image_gpt_backbone import ImageGPTBackbone
from keras_vtx.models.igpt.image_gpt_presets import VARIANTS, count_parameters
from keras_vtx.models.presets import get_preset
from tests.test_case import (
    assert_allclose,
    assert_config_round_trip,
    gradients,
    randomize_weights,
    to_numpy,
)

TINY = dict(vocabulary_size=17, sequence_length=16, hidden_dim=8, num_layers=2, num_heads=2)


def ids(batch=2, length=16, high=17, seed=0):
    return np.random.default_rng(seed).integers(0, high, (batch, length)).astype("int32")


def test_shapes_and_attributes():
    model = ImageGPTBackbone(**TINY)
    assert tuple(model(ids()).shape) == (2, 16, 8)
    assert tuple(model(ids(length=5)).shape) == (2, 5, 8)
    assert isinstance(model.token_embedding, keras.layers.Embedding)
    assert tuple(model.token_embedding.embeddings.shape) == (17, 8)
    assert tuple(model.position_embedding.embeddings.shape) == (16, 8)
    assert [b.name for b in model.transformer_layers] == [
        "transformer_layer_0", "transformer_layer_1"]
    block = model.transformer_layers[0]
    assert (block.norm, block.activation, block.norm_first) == ("rms_norm", "quick_gelu", True)
    assert block.mlp_dim == 32  # 4 * hidden_dim by default
    assert isinstance(model.final_norm, keras.layers.RMSNormalization)


@pytest.mark.parametrize("causal", [True, False])
def test_causal_attention(causal):
    model = ImageGPTBackbone(**{**TINY, "causal": causal})
    randomize_weights(model, seed=2)
    a = ids(1, 16, seed=3)
    b = a.copy()
    b[0, 9] = (b[0, 9] + 1) % 17
    out_a, out_b = to_numpy(model(a)), to_numpy(model(b))
    changed = np.abs(out_a - out_b).max(axis=-1)[0] > 1e-6
    if causal:
        assert not changed[:9].any() and changed[9:].all()
    else:
        assert changed.all()


@pytest.mark.parametrize("causal", [True, False])
def test_remat_keeps_outputs_and_gradients(causal):
    from keras_vtx.models.igpt.image_gpt import ImageGPT

    plain = ImageGPTBackbone(**TINY, causal=causal)
    randomize_weights(plain, seed=5)
    remat = ImageGPTBackbone(**TINY, causal=causal, remat=True)
    remat.set_weights(plain.get_weights())
    assert all(block.remat for block in remat.transformer_layers)
    assert not any(block.remat for block in plain.transformer_layers)
    x = ids(seed=2)
    assert_allclose(remat(x, training=True), plain(x, training=True), atol=1e-5)
    for got, want in zip(gradients(remat, x, training=True), gradients(plain, x, training=True)):
        assert_allclose(got, want, atol=1e-5)
    assert remat.get_config()["remat"] is True
    assert ImageGPTBackbone.from_config(remat.get_config()).transformer_layers[0].remat
    task = ImageGPT.from_preset("igpt_tiny_test", remat=True)
    assert task.backbone.remat and task.backbone.transformer_layers[-1].remat


def test_config_round_trip_keeps_the_options():
    # Saving, presets and gradients: the shared harness (tests/models/test_model_harness.py).
    model = ImageGPTBackbone(**{**TINY, "causal": False, "mlp_dim": 12, "dropout": 0.1})
    clone = assert_config_round_trip(model)
    assert clone.causal is False and clone.mlp_dim == 12


@pytest.mark.parametrize(
    "bad, match",
    [
        (ids(1, 17), "longer than the model's context"),
        (np.full((1, 4), 17, "int32"), r"in \[0, 17\)"),
        (np.full((1, 4), -1, "int32"), r"in \[0, 17\)"),
        (np.zeros((1, 4), "float32"), "integer ids"),
        (np.zeros((1, 4, 1), "int32"), "rank 2"),
    ],
    ids=["too_long", "too_high", "negative", "float", "rank3"],
)
def test_bad_inputs(bad, match):
    model = ImageGPTBackbone(**TINY)
    with pytest.raises(ValueError, match=match):
        model(bad)


def test_bad_arguments():
    with pytest.raises(ValueError, match="divisible by `num_heads`"):
        ImageGPTBackbone(**{**TINY, "num_heads": 3})
    with pytest.raises(ValueError, match="`vocabulary_size` must be at least 2"):
        ImageGPTBackbone(**{**TINY, "vocabulary_size": 1})


@pytest.mark.parametrize("config", [TINY, {**TINY, "mlp_dim": 12, "hidden_dim": 6,
                                           "num_heads": 3, "num_layers": 3}])
def test_parameter_count_formula_matches_built_models(config):
    model = ImageGPTBackbone(**config)
    formula = count_parameters(config["vocabulary_size"], config["sequence_length"],
                               config["hidden_dim"], config["num_layers"],
                               config.get("mlp_dim"), head=False)
    assert model.count_params() == formula


@pytest.mark.backend_independent
def test_parameter_counts_match_transformers_and_paper():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    paper = {"small": 76e6, "medium": 455e6, "large": 1.4e9, "xlarge": 6.8e9}
    for size, (layers, width, heads, _) in VARIANTS.items():
        preset = get_preset(f"igpt_{size}")
        config = preset["config"]["backbone"]
        ours = preset["metadata"]["parameters"]
        assert ours == count_parameters(config["vocabulary_size"], config["sequence_length"],
                                        width, layers)
        assert abs(ours - paper[size]) / paper[size] < 0.03, (size, ours)
        if size == "xlarge":
            continue
        with torch.device("meta"):
            reference = transformers.ImageGPTForCausalImageModeling(
                transformers.ImageGPTConfig(n_embd=width, n_layer=layers, n_head=heads))
        assert ours == sum(p.numel() for p in reference.parameters()), size
