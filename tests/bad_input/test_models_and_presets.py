"""Bad input to the models and presets: clear errors that name the argument or the file.

Part of the bad-input catalogue (docs/bad_input.md lists every case and what it
gets); runs on every backend.
"""

import json

import numpy as np
import pytest

from keras_vtx.models import (
    CLIP,
    CLIPTextEncoder,
    ImageGPT,
    ImageGPTBackbone,
    ImageGPTClassifier,
    ViTBackbone,
    ViTClassifier,
)
from tests.test_case import to_numpy

# --- Token ids out of range: eager calls, predict, evaluate, fit (issue 26, items 2, 3, 9) ---


@pytest.fixture(scope="module")
def igpt():
    model = ImageGPT.from_preset("igpt_tiny_test")
    model.compile()
    return model


def _pixel_ids(model, bad=None):
    ids = np.zeros((2, model.sequence_length), "int32")
    if bad is not None:
        ids[1, 3] = bad
    return ids


@pytest.mark.parametrize("bad", [16, -1, 1000])
def test_image_gpt_predict_evaluate_fit_check_pixel_ids(igpt, bad):
    ids = _pixel_ids(igpt, bad)
    message = r"`pixel_ids` must hold palette ids in \[0, 16\); received values in"
    with pytest.raises(ValueError, match=message):
        igpt(ids)
    with pytest.raises(ValueError, match=message):
        igpt.predict(ids, verbose=0)
    with pytest.raises(ValueError, match=message):
        igpt.predict({"pixel_ids": ids}, verbose=0)
    with pytest.raises(ValueError, match=message):
        igpt.evaluate(ids, ids, verbose=0)
    with pytest.raises(ValueError, match=message):
        igpt.fit(ids, ids, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=message):
        igpt.fit(_pixel_ids(igpt), _pixel_ids(igpt), validation_data=(ids, ids), verbose=0)


def test_image_gpt_bad_ids_in_a_tf_data_pipeline_or_generator_stop_the_run(igpt):
    tf = pytest.importorskip("tensorflow")
    good = _pixel_ids(igpt)
    expected = to_numpy(igpt.predict(good, verbose=0))
    ids = np.concatenate([good, _pixel_ids(igpt, igpt.palette_size)])
    data = tf.data.Dataset.from_tensor_slices(ids).batch(2)  # the second batch is bad
    with pytest.raises(ValueError, match=r"`pixel_ids` .* received values in \[0, 16\] \(a "
                                         r"batch of the data pipeline\)"):
        igpt.predict(data, verbose=0)

    def batches():
        yield good
        yield ids[2:]

    with pytest.raises(ValueError, match=r"`pixel_ids` must hold palette ids"):
        igpt.predict(batches(), verbose=0)
    # The model is intact afterwards (on JAX, Keras detaches the variables during a run).
    np.testing.assert_allclose(to_numpy(igpt.predict(good, verbose=0)), expected, atol=1e-6)
    pairs = tf.data.Dataset.from_tensor_slices((ids, ids)).batch(2)
    with pytest.raises(ValueError, match=r"`pixel_ids` must hold palette ids"):
        igpt.evaluate(pairs, verbose=0)


def test_image_gpt_classifier_and_backbone_predict_check_ids():
    classifier = ImageGPTClassifier.from_preset("igpt_tiny_test", num_classes=3)
    ids = _pixel_ids(classifier.backbone, -1)
    with pytest.raises(ValueError, match=r"`pixel_ids` must hold palette ids"):
        classifier.predict(ids, verbose=0)
    backbone = ImageGPTBackbone.from_preset("igpt_tiny_test")
    with pytest.raises(ValueError, match=r"`token_ids` must hold token ids .* \[0, 17\)"):
        backbone.predict(_pixel_ids(backbone, 17), verbose=0)
    assert to_numpy(backbone.predict(_pixel_ids(backbone, 16), verbose=0)).shape[:2] == (
        2, backbone.sequence_length)


def _tiny_clip():
    vision = ViTBackbone(image_size=8, patch_size=4, num_layers=1, hidden_dim=8, num_heads=2,
                         mlp_dim=8, pooling="token")
    text = CLIPTextEncoder(vocabulary_size=50, context_length=6, num_layers=1, hidden_dim=8,
                           num_heads=2, mlp_dim=8, end_token_id=49)
    return CLIP(vision, text, projection_dim=4)


@pytest.mark.parametrize("bad", [50, -5])
def test_clip_token_ids_out_of_range(bad):
    model = _tiny_clip()
    tokens = np.array([[48, 3, 49, 0, 0, 0], [48, bad, 49, 0, 0, 0]], "int32")
    images = np.zeros((2, 8, 8, 3), "float32")
    message = r"`token_ids` must hold token ids of the vocabulary in \[0, 50\); received"
    with pytest.raises(ValueError, match=message):
        model.encode_text(tokens)
    with pytest.raises(ValueError, match=message):
        model({"images": images, "token_ids": tokens})
    with pytest.raises(ValueError, match=message):
        model.predict({"images": images, "token_ids": tokens}, verbose=0)
    with pytest.raises(ValueError, match=message):
        model.text_encoder.predict(tokens, verbose=0)
    model.compile()
    with pytest.raises(ValueError, match=message):
        model.fit({"images": images, "token_ids": tokens}, epochs=1, batch_size=2, verbose=0)
    tf = pytest.importorskip("tensorflow")
    data = tf.data.Dataset.from_tensor_slices({"images": images, "token_ids": tokens}).batch(1)
    with pytest.raises(ValueError, match=r"`token_ids` must hold token ids .*data pipeline"):
        model.fit(data, epochs=1, verbose=0)
    good = tokens.copy()
    good[1, 1] = 3
    assert to_numpy(model.predict({"images": images, "token_ids": good},
                                  verbose=0)["text_embeddings"]).shape == (2, 4)


# --- Presets written by save_to_preset (issue 26, items 5, 6, 8) ---


def _tiny_classifier():
    return ViTClassifier(ViTBackbone(image_size=8, patch_size=4, num_layers=1, hidden_dim=8,
                                     num_heads=2, mlp_dim=8), num_classes=3)


def test_save_to_preset_refuses_to_replace_a_preset(tmp_path):
    from keras_vtx.models import ImageGPT

    path = tmp_path / "preset"
    model = _tiny_classifier()
    model.save_to_preset(str(path))
    other = ImageGPT.from_preset("igpt_tiny_test")
    with pytest.raises(FileExistsError, match=r"already holds a preset .*overwrite=True"):
        other.save_to_preset(str(path))
    # Untouched: still the ViT, with its weights.
    again = ViTClassifier.from_preset(str(path))
    images = np.zeros((1, 8, 8, 3), "float32")
    np.testing.assert_allclose(to_numpy(again(images)), to_numpy(model(images)))
    other.save_to_preset(str(path), overwrite=True)
    assert type(ImageGPT.from_preset(str(path))).__name__ == "ImageGPT"
    (tmp_path / "empty").mkdir()  # an existing directory without a preset is fine
    model.save_to_preset(str(tmp_path / "empty"))


def test_a_corrupted_weights_file_is_named(tmp_path):
    path = tmp_path / "preset"
    _tiny_classifier().save_to_preset(str(path))
    record = json.loads((path / "keras_vtx_preset.json").read_text())
    weights = path / "model.weights.h5"
    assert record["files"]["model.weights.h5"]["bytes"] == weights.stat().st_size
    data = bytearray(weights.read_bytes())
    data[-200] ^= 0xFF  # one flipped byte
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model\.weights\.h5.* does not match the checksum"):
        ViTClassifier.from_preset(str(path))
    # A preset written before checksums were recorded loads without the check; a truncated
    # weights file then names itself.
    del record["files"]
    (path / "keras_vtx_preset.json").write_text(json.dumps(record))
    weights.write_bytes(bytes(data[:1000]))
    with pytest.raises(ValueError, match=r"Could not read the weights .*model\.weights\.h5"):
        ViTClassifier.from_preset(str(path))


@pytest.mark.parametrize("text, match", [("{not json", "is not valid JSON"),
                                         ("[1, 2]", "must hold an object with 'class_name'")])
def test_a_damaged_preset_record_is_named(tmp_path, text, match):
    path = tmp_path / "preset"
    _tiny_classifier().save_to_preset(str(path))
    (path / "keras_vtx_preset.json").write_text(text)
    with pytest.raises(ValueError, match=match) as error:
        ViTClassifier.from_preset(str(path))
    assert str(path / "keras_vtx_preset.json") in str(error.value)


# --- transformers checkpoint directories (issue 26, item 8) ---


@pytest.fixture
def vit_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    config = transformers.ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=8, image_size=8, patch_size=4)
    path = tmp_path / "vit"
    transformers.ViTModel(config).save_pretrained(str(path))
    return path


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbled"])
def test_damaged_safetensors_are_named(vit_checkpoint, damage):
    weights = vit_checkpoint / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "empty": b"",
                         "garbled": b"\xff" * 64 + data[64:]}[damage])
    with pytest.raises(ValueError, match=r"Could not read the checkpoint weights .*"
                                         r"model\.safetensors.*download or save the checkpoint"):
        ViTBackbone.from_preset(str(vit_checkpoint))


@pytest.mark.parametrize("text, match", [("{broken", "is not valid JSON"),
                                         ("[1, 2]", "must hold a JSON object")])
def test_damaged_config_json_is_named(vit_checkpoint, text, match):
    (vit_checkpoint / "config.json").write_text(text)
    with pytest.raises(ValueError, match=match) as error:
        ViTBackbone.from_preset(str(vit_checkpoint))
    assert str(vit_checkpoint / "config.json") in str(error.value)


def test_damaged_shard_index_is_named(vit_checkpoint):
    weights = vit_checkpoint / "model.safetensors"
    weights.rename(vit_checkpoint / "model-00001-of-00001.safetensors")
    index = vit_checkpoint / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json.* no 'weight_map'"):
        ViTBackbone.from_preset(str(vit_checkpoint))
    index.write_text("{")
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json.* not valid JSON"):
        ViTBackbone.from_preset(str(vit_checkpoint))
