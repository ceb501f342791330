"""The DETR detection recipe end to end, tiny: interrupted, resumed, reported, reloaded."""

import importlib.util
import json
import os

import keras
import numpy as np
import pytest

from keras_vtx.models import DETR

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Interrupting and resuming exercises Keras' BackupAndRestore, which does not depend on the
# backend: checked in the PyTorch session (eager, no compile to repeat); the others run the
# recipe once, end to end, with the matcher compiled into the step.
RESUME_ON_THIS_BACKEND = keras.backend.backend() == "torch"


def _load_recipe():
    path = os.path.join(REPO, "recipes", "detr_detection.py")
    spec = importlib.util.spec_from_file_location("detr_detection_recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


# Two compiles of a tiny DETR with the matcher inside the step: ~20-60 s on 2 CPU cores.
@pytest.mark.slow
def test_recipe_resumes_reports_and_saves_a_reloadable_preset(tmp_path):
    recipe = _load_recipe()
    output = tmp_path / "run"
    argv = ["--preset", "detr_tiny_test", "--data", "shapes:40", "--epochs", "2",
            "--steps-per-epoch", "2", "--batch-size", "4", "--max-boxes", "5",
            "--output", str(output), "--verbose", "0", "--distribute", "--draw", "2"]
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
    for key in ("AP", "AP50", "AP75", "AR100"):
        assert 0.0 <= report[key] <= 1.0, key
    assert report["AP50"] >= report["AP75"]
    assert report["backend"] == keras.backend.backend() and report["bad_files"] == 0
    assert (report["num_train"], report["num_validation"]) == (32, 8)  # 20% held out
    assert report["num_classes"] == 6 and len(report["class_names"]) == 6
    assert report["images_per_second"] > 0 and report["wall_time_s"] > 0
    assert all(np.isfinite(v) for v in report["history"]["loss"])
    assert os.listdir(output / "logs") and (output / "checkpoints" / "best.weights.h5").exists()
    with open(output / "detections.json") as f:
        detections = json.load(f)
    assert detections and {"image_id", "category_id", "bbox", "score"} <= set(detections[0])
    assert len(report["drawn"]) == 2 and all(os.path.getsize(p) > 0 for p in report["drawn"])

    # The saved preset reloads with the data's classes and gives the same outputs.
    model = DETR.from_preset(str(output / "preset"))
    assert model.num_classes == 6 and model.class_names == tuple(report["class_names"])


def test_recipe_rejects_bad_flags():
    recipe = _load_recipe()
    for argv in (["--epochs", "0"], ["--precision", "float8"], ["--batch-size", "-1"],
                 ["--validation-split", "1.5"], ["--matcher", "greedy"], ["--draw", "-1"]):
        with pytest.raises(SystemExit):
            recipe.parse_args(argv)
    args = recipe.parse_args([])
    assert (args.preset, args.data, args.precision, args.matcher) == (
        "detr_pico_shapes", "shapes", "float32", "auto")
