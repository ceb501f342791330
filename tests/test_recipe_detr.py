"""The DETR detection recipe end to end, tiny: interrupted, resumed, reported, reloaded."""

import json
import os

import keras
import numpy as np
import pytest

from keras_vtx.models import DETR
from tests.recipe_helpers import load_recipe, run_two_epochs

# Where the interrupted-then-resumed run is checked (see `run_two_epochs`): eager
# PyTorch, where the second run costs no new compile.
RESUME_ON_THIS_BACKEND = keras.backend.backend() == "torch"


# Two compiles of a tiny DETR with the matcher inside the step: ~20-60 s on 2 CPU cores.
@pytest.mark.slow
def test_recipe_resumes_reports_and_saves_a_reloadable_preset(tmp_path):
    recipe = load_recipe("detr_detection")
    output = tmp_path / "run"
    argv = ["--preset", "detr_tiny_test", "--data", "shapes:40", "--epochs", "2",
            "--steps-per-epoch", "2", "--batch-size", "4", "--max-boxes", "5",
            "--output", str(output), "--verbose", "0", "--distribute", "--draw", "2"]
    report = run_two_epochs(recipe, argv, output, RESUME_ON_THIS_BACKEND)

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
    recipe = load_recipe("detr_detection")
    for argv in (["--epochs", "0"], ["--precision", "float8"], ["--batch-size", "-1"],
                 ["--validation-split", "1.5"], ["--matcher", "greedy"], ["--draw", "-1"]):
        with pytest.raises(SystemExit):
            recipe.parse_args(argv)
    args = recipe.parse_args([])
    assert (args.preset, args.data, args.precision, args.matcher) == (
        "detr_pico_shapes", "shapes", "float32", "auto")


# One command fine-tunes a published-format checkpoint on a COCO folder with other classes.
# Run once: the recipe's path is backend-independent, and the conversion is checked on every
# backend by tests/convert/test_detr_parity.py.
@pytest.mark.slow
@pytest.mark.only_backend("torch")
def test_recipe_fine_tunes_a_transformers_checkpoint_on_a_coco_folder(tmp_path):
    pytest.importorskip("transformers")
    from keras_vtx.data.shapes import export_shapes_coco
    from tests.convert.test_detr_parity import _transformers_detr

    reference = _transformers_detr()  # 3 classes, a tiny ResNet with frozen stem and stage 1
    checkpoint = tmp_path / "checkpoint"
    reference.save_pretrained(checkpoint)
    annotations, _ = export_shapes_coco(tmp_path / "coco", 20, image_size=64)
    output = tmp_path / "run"
    recipe = load_recipe("detr_detection")
    with pytest.warns(UserWarning, match="class_head/kernel, class_head/bias changed shape"):
        report = recipe.main([
            "--preset", str(checkpoint), "--data", annotations, "--epochs", "1",
            "--steps-per-epoch", "2", "--batch-size", "4", "--max-boxes", "5", "--output",
            str(output), "--verbose", "0", "--draw", "0",
        ])
    assert report["num_classes"] == 6 and report["class_names"][0] == "circle"
    assert (report["num_train"], report["num_validation"]) == (16, 4)
    assert report["learning_rate"] == 1e-4 and report["backbone_learning_rate"] == 1e-5
    assert 0.0 <= report["AP"] <= 1.0 and np.all(np.isfinite(report["history"]["loss"]))
    model = DETR.from_preset(str(output / "preset"))
    assert model.num_classes == 6 and model.num_queries == 5
    # The checkpoint's weights were loaded: its frozen stem is unchanged by the training.
    parameters = dict(reference.named_parameters())
    stem = parameters["model.backbone.model.embedder.embedder.convolution.weight"]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model.backbone.get_layer("stem_conv").kernel),
        stem.detach().numpy().transpose(2, 3, 1, 0), atol=1e-6)
