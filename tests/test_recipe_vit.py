"""The ViT classification recipe end to end, tiny: interrupted, resumed, reported, reloaded."""

import json
import os

import keras
import numpy as np
import pytest

from keras_vtx.models import ViTBackbone, ViTClassifier
from tests.recipe_helpers import load_recipe, run_two_epochs

# Where the interrupted-then-resumed run is checked (see `run_two_epochs`): eager
# PyTorch, where the second run costs no new compile.
RESUME_ON_THIS_BACKEND = keras.backend.backend() == "torch"


def test_recipe_resumes_reports_and_saves_a_reloadable_preset(tmp_path):
    recipe = load_recipe("vit_classification")
    output = tmp_path / "run"
    # One narrow layer, as a preset directory: the recipe's mechanics, not its accuracy,
    # are tested here.
    tiny = tmp_path / "tiny_preset"
    ViTClassifier(ViTBackbone(image_size=32, patch_size=8, num_layers=1, hidden_dim=16,
                              num_heads=2, mlp_dim=32), num_classes=6,
                  include_preprocessing=True).save_to_preset(str(tiny))
    argv = ["--preset", str(tiny), "--data", "shapes:96", "--epochs", "2", "--steps-per-epoch", "2",
            "--batch-size", "16", "--output", str(output), "--verbose", "0", "--distribute",
            "--pretrain-epochs", "2"]
    report = run_two_epochs(recipe, argv, output, RESUME_ON_THIS_BACKEND)
    # Masked patch prediction ran first, on the colour-field shapes, and a resumed run
    # reused its backbone (the same record) instead of pretraining again.
    with open(output / "pretrain" / "report.json") as f:
        pretrained = json.load(f)
    assert {k: report[k] for k in pretrained} == pretrained
    assert len(report["pretrain_patch_accuracy"]) == 2 and report["freeze_embeddings"]
    assert report["pretrain_data"] == "shapes:96 (background field)"
    assert np.isfinite(report["pretrain_loss"]).all()
    # The tiny preset's position embeddings started as a sine-cosine table (pretraining).
    assert report["position_init"] == "sincos2d"

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
    assert model.num_classes == 6 and model.backbone.position_embedding_init == "sincos2d"
    model.compile(total_steps=10, warmup_steps=1)
    from keras_vtx.data import load_classification_data

    _, validation, _ = load_classification_data("shapes:96", image_size=32, batch_size=16,
                                                validation_split=0.1)
    results = model.evaluate(validation, return_dict=True, verbose=0)
    np.testing.assert_allclose(results["accuracy"], report["accuracy"], atol=1e-6)
    np.testing.assert_allclose(results["loss"], report["loss"], rtol=1e-4)

    # Figure 7: the heads' mean attention distance on the (10) held-out images, drawn
    # beside a head that attends uniformly (a 4x4 grid of 8-pixel cells).
    from keras_vtx.analysis import mean_attention_distance, uniform_attention_distance

    images = np.concatenate([x for x, _ in validation.as_numpy_iterator()])
    attending = ViTClassifier.from_preset(str(output / "preset"), return_attention_scores=True)
    np.testing.assert_allclose(report["mean_attention_distance"],
                               mean_attention_distance(attending, images), atol=1e-3)
    assert np.shape(report["mean_attention_distance"]) == (1, 2)
    assert report["uniform_attention_distance"] == uniform_attention_distance((4, 4), 8.0)
    assert os.path.getsize(report["attention_distance_png"]) > 0


def test_recipe_rejects_bad_flags(tmp_path):
    recipe = load_recipe("vit_classification")
    with pytest.raises(SystemExit):
        recipe.parse_args(["--epochs", "0"])
    with pytest.raises(SystemExit):
        recipe.parse_args(["--precision", "float8"])
    args = recipe.parse_args([])
    assert (args.preset, args.data, args.precision) == ("vit_pico_patch4_32", "shapes", "float32")
    # Pretraining and frozen embeddings by default on the shapes set only.
    assert (args.pretrain_epochs, args.freeze_embeddings) == (recipe.PRETRAIN_EPOCHS, "yes")
    assert args.position_init == "sincos2d"
    args = recipe.parse_args(["--data", "dir:/data"])
    assert (args.pretrain_epochs, args.freeze_embeddings, args.position_init) == (0, "no", None)
    assert recipe.parse_args(["--position-init", "normal"]).position_init == "normal"
    with pytest.raises(SystemExit):
        recipe.parse_args(["--position-init", "sincos"])
    with pytest.raises(SystemExit):
        recipe.parse_args(["--pretrain-mask-rate", "1.5"])
    untransformed = tmp_path / "raw"
    ViTClassifier(ViTBackbone(image_size=32, patch_size=8, num_layers=1, hidden_dim=16,
                              num_heads=2, mlp_dim=32), num_classes=6).save_to_preset(
        str(untransformed))
    with pytest.raises(ValueError, match="--pretrain-epochs needs a preset that takes raw"):
        recipe.main(["--preset", str(untransformed), "--data", "shapes:96", "--epochs", "1",
                     "--output", str(tmp_path / "out"), "--verbose", "0"])


def test_augmentation_choices():
    recipe = load_recipe("vit_classification")
    options = recipe.augmentation_options
    # The shapes set: flips only (a class never changes under a horizontal flip), no crop.
    assert options("auto", "shapes:100") == {"flip": True, "train_crop": "random", "padding": 0}
    assert options("none", "shapes") == {"flip": False, "train_crop": "random", "padding": 0}
    assert options("auto", "dir:/data/flowers") == options("crop_flip", "shapes") == {}
    assert options("randaugment", "shapes")["mixup_alpha"] == 0.8
    assert recipe.parse_args([]).epochs == 8
    with pytest.raises(SystemExit):
        recipe.parse_args(["--head-weight-decay", "3.0"])  # an Adafactor option

