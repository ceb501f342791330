"""`from_preset` overrides: one routing rule for every model (keras_vtx.models.overrides).

Runs on every backend: the rebuilt models and their weights are backend objects.
"""

import keras
import numpy as np
import pytest

from keras_vtx.models import (
    CLIP,
    ImageGPT,
    ImageGPTBackbone,
    ImageGPTClassifier,
    ViTBackbone,
    ViTClassifier,
)
from keras_vtx.models.detr import DETR
from keras_vtx.models.overrides import split_task_overrides
from tests.test_case import to_numpy

IMAGES = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")


def test_a_task_argument_goes_to_the_task_even_where_the_backbone_has_one(tmp_path):
    # The bug of issue 27: `activation` was routed to the backbone's MLP and failed.
    model = ViTClassifier.from_preset("vit_pico_patch4_32", num_classes=3,
                                      activation="softmax")
    assert model.activation == "softmax"
    assert model.backbone.get_config()["activation"] == "gelu"
    probabilities = to_numpy(model(IMAGES))
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)
    # The same from a saved preset: the backbone's weights are kept.
    model.save_to_preset(str(tmp_path / "vit"))
    logits = ViTClassifier.from_preset(str(tmp_path / "vit"), activation=None)
    assert logits.activation is None
    np.testing.assert_allclose(to_numpy(keras.ops.softmax(logits(IMAGES))), probabilities,
                               atol=1e-5)


def test_backbone_config_is_the_route_to_a_name_both_take():
    model = ViTClassifier.from_preset("vit_pico_patch4_32", num_classes=3,
                                      backbone_config={"activation": "relu"})
    assert model.backbone.get_config()["activation"] == "relu"
    assert model.activation is None


def test_image_gpt_classifier_dropout_is_the_heads(tmp_path):
    # The bug of issue 27: `dropout` silently set the backbone's and left the head's at 0.
    model = ImageGPTClassifier.from_preset("igpt_tiny_test", num_classes=3, dropout=0.3)
    assert model.dropout == 0.3
    assert model.backbone.dropout == 0.0
    model = ImageGPTClassifier.from_preset("igpt_tiny_test", num_classes=3,
                                           backbone_config={"dropout": 0.2})
    assert (model.dropout, model.backbone.dropout) == (0.0, 0.2)
    # From a saved ImageGPT: the backbone's weights move, the head's dropout is set.
    generator = ImageGPT.from_preset("igpt_tiny_test")
    generator.save_to_preset(str(tmp_path / "igpt"))
    model = ImageGPTClassifier.from_preset(str(tmp_path / "igpt"), num_classes=3, dropout=0.3)
    assert model.dropout == 0.3 and model.backbone.dropout == 0.0
    for ours, theirs in zip(model.backbone.weights, generator.backbone.weights):
        np.testing.assert_array_equal(to_numpy(ours), to_numpy(theirs))
    with pytest.raises(ValueError, match="num_classes"):
        ImageGPTClassifier.from_preset(str(tmp_path / "igpt"))


def test_a_name_only_the_backbone_takes_goes_to_it():
    model = ViTClassifier.from_preset("vit_pico_patch4_32", num_classes=3, image_size=48)
    assert model.backbone.image_size == (48, 48)
    bert = ImageGPT.from_preset("igpt_tiny_test", objective="bert")
    assert bert.backbone.causal is False  # the objective decides the attention


@pytest.mark.parametrize("cls,preset", [
    (ViTClassifier, "vit_pico_patch4_32"),
    (ImageGPTClassifier, "igpt_tiny_test"),
    (DETR, "detr_tiny_test"),
    (CLIP, "clip_pico_patch4_32"),
])
def test_an_unknown_name_lists_the_valid_ones(cls, preset):
    with pytest.raises(ValueError, match=r"unknown override `colour`.*Valid names"):
        cls.from_preset(preset, colour="red")


def test_an_unknown_name_in_backbone_config_is_an_error():
    with pytest.raises(ValueError, match=r"`backbone_config` holds names ViTBackbone does not "
                                         r"take: \['colour'\]"):
        ViTClassifier.from_preset("vit_pico_patch4_32", backbone_config={"colour": "red"})
    with pytest.raises(TypeError, match="`backbone_config` must be a dict"):
        ViTClassifier.from_preset("vit_pico_patch4_32", backbone_config="relu")


def test_backbone_from_preset_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"ViTBackbone.from_preset\(\) got unknown overrides "
                                         r"\['num_classes'\]"):
        ViTBackbone.from_preset("vit_pico_patch4_32", num_classes=3)


def test_clip_never_guesses_which_tower(tmp_path):
    with pytest.raises(ValueError, match=r"several parts of CLIP.*image_encoder_config="
                                         r".*text_encoder_config="):
        CLIP.from_preset("clip_pico_patch4_32", dropout=0.1)
    model = CLIP.from_preset("clip_pico_patch4_32", image_encoder_config={"dropout": 0.1},
                             remat=True, text_encoder={"remat": False})
    assert model.image_encoder.get_config()["dropout"] == 0.1
    assert model.text_encoder.get_config()["dropout"] == 0.0
    assert model.image_encoder.remat is True and model.text_encoder.remat is False
    # Saved and reloaded with an override of CLIP's own: every weight moves.
    model.save_to_preset(str(tmp_path / "clip"))
    reloaded = CLIP.from_preset(str(tmp_path / "clip"), include_preprocessing=False)
    assert reloaded.include_preprocessing is False
    for ours, theirs in zip(reloaded.weights, model.weights):
        np.testing.assert_array_equal(to_numpy(ours), to_numpy(theirs))


def test_the_rule_in_one_table():
    task, backbones = split_task_overrides(ImageGPTClassifier, {
        "dropout": 0.3, "num_layers": 2, "objective": "bert",
        "backbone_config": {"dropout": 0.1},
    })
    assert task == {"dropout": 0.3, "objective": "bert"}
    assert backbones == {"backbone": {"num_layers": 2, "dropout": 0.1, "causal": False}}


def test_overrides_that_change_nothing_return_the_loaded_model(tmp_path):
    backbone = ImageGPTBackbone.from_preset("igpt_tiny_test")
    backbone.save_to_preset(str(tmp_path / "b"))
    same = ImageGPTBackbone.from_preset(str(tmp_path / "b"), dropout=backbone.dropout)
    assert same.get_config() == backbone.get_config()


def test_a_preset_of_another_family_is_a_clear_error():
    with pytest.raises(ValueError, match="'igpt_tiny_test' builds a ImageGPT, not a ViTClassifier"):
        ViTClassifier.from_preset("igpt_tiny_test", num_classes=3)
    with pytest.raises(ValueError, match="holds no ViTBackbone"):
        ViTBackbone.from_preset("igpt_tiny_test")


def test_a_saved_image_gpt_becomes_a_bert_classifier(tmp_path):
    # The objective decides the backbone's attention before the classifier adopts it.
    generator = ImageGPT.from_preset("igpt_tiny_test")
    generator.save_to_preset(str(tmp_path / "igpt"))
    model = ImageGPTClassifier.from_preset(str(tmp_path / "igpt"), num_classes=3,
                                           objective="bert", dropout=0.1)
    assert (model.objective, model.backbone.causal, model.dropout) == ("bert", False, 0.1)
    for ours, theirs in zip(model.backbone.weights, generator.backbone.weights):
        np.testing.assert_array_equal(to_numpy(ours), to_numpy(theirs))
