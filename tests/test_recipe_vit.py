"""The ViT classification recipe end to end, tiny: interrupted, resumed, reported, reloaded."""

import importlib.util
import json
import os

import keras
import numpy as np
import pytest

from keras_vtx.models import ViTClassifier

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_recipe():
    path = os.path.join(REPO, "recipes", "vit_classification.py")
    spec = importlib.util.spec_from_file_location("vit_classification_recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

# Interrupting and resuming exercises Keras' BackupAndRestore, which does not depend on the
# backend: checked in the TensorFlow session; the others run the recipe once, end to end.
RESUME_ON_THIS_BACKEND = keras.backend.backend() == "tensorflow"

class _Interrupted(Exception):
    pass


class _InterruptAfterFirstEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise _Interrupted(f"stopped after epoch {epoch}")


class _EpochRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_recipe_resumes_reports_and_saves_a_reloadable_preset(tmp_path):
    recipe = _load_recipe()
    output = tmp_path / "run"
    argv = ["--data", "shapes:96", "--epochs", "2", "--steps-per-epoch", "2",
            "--batch-size", "16", "--output", str(output), "--verbose", "0", "--distribute"]
    if RESUME_ON_THIS_BACKEND:
        with pytest.raises(_Interrupted):
            recipe.main(argv, callbacks=[_InterruptAfterFirstEpoch()])
        assert os.listdir(output / "backup"), "no backup written before the interruption"
        assert not (output / "report.json").exists()

        recorder = _EpochRecorder()
        report = recipe.main(argv, callbacks=[recorder])
        assert recorder.epochs == [1], "the second run did not resume after the first epoch"
        assert report["epochs_run"] == 1 and report["epochs"] == 2
    else:
        report = recipe.main(argv)
        assert report["epochs_run"] == 2 and report["epochs"] == 2

    with open(output / "report.json") as f:
        written = json.load(f)
    assert written == report
    for key in ("accuracy", "top5_accuracy"):
        assert 0.0 <= report[key] <= 1.0
    assert report["top5_accuracy"] >= report["accuracy"]
    assert np.isfinite(report["loss"]) and report["loss"] > 0
    assert report["images_per_second"] > 0 and report["wall_time_s"] > 0
    assert report["bad_files"] == 0 and report["backend"] == keras.backend.backend()
    assert (report["num_train"], report["num_validation"]) == (86, 10)  # --validation-split 0.1
    assert os.listdir(output / "logs") and (output / "checkpoints" / "best.weights.h5").exists()

    # The saved preset reloads and scores exactly what the report says.
    model = ViTClassifier.from_preset(str(output / "preset"))
    assert model.num_classes == 6
    model.compile(total_steps=10, warmup_steps=1)
    from keras_vtx.data import load_classification_data

    _, validation, _ = load_classification_data("shapes:96", image_size=32, batch_size=16,
                                                validation_split=0.1)
    results = model.evaluate(validation, return_dict=True, verbose=0)
    np.testing.assert_allclose(results["accuracy"], report["accuracy"], atol=1e-6)
    np.testing.assert_allclose(results["loss"], report["loss"], rtol=1e-4)


def test_recipe_rejects_bad_flags(tmp_path):
    recipe = _load_recipe()
    with pytest.raises(SystemExit):
        recipe.parse_args(["--epochs", "0"])
    with pytest.raises(SystemExit):
        recipe.parse_args(["--precision", "float8"])
    args = recipe.parse_args([])
    assert (args.preset, args.data, args.precision) == ("vit_pico_patch4_32", "shapes", "float32")
