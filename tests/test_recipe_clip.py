"""The CLIP contrastive recipe end to end, tiny: interrupted, resumed, reported, reloaded."""

import json
import os

import keras
import numpy as np
import pytest

from keras_vtx.models.clip import CLIP, clip_image_encoder_config, clip_text_encoder_config
from keras_vtx.models.presets import register_preset
from tests.recipe_helpers import load_recipe, run_two_epochs

TINY_PRESET = "clip_test_tiny_recipe"

# One narrow layer per tower: the recipe's mechanics, not its accuracy, are tested here.
register_preset(
    TINY_PRESET,
    "CLIP",
    {
        "image_encoder": clip_image_encoder_config("Ti/8", 32, hidden_dim=16, num_layers=1,
                                                   num_heads=2, mlp_dim=32),
        "text_encoder": clip_text_encoder_config(16, num_layers=1, num_heads=2),
        "projection_dim": 8,
    },
    "A tiny CLIP for the recipe's smoke test.",
)


# Where the interrupted-then-resumed run is checked (see `run_two_epochs`): eager
# PyTorch, where the second run costs no new compile.
RESUME_ON_THIS_BACKEND = keras.backend.backend() == "torch"


# Builds CLIP's BPE tokenizer and two tiny trainings: ~30-60 s on a shared CPU.
@pytest.mark.slow
def test_recipe_resumes_reports_and_saves_a_reloadable_preset(tmp_path):
    recipe = load_recipe("clip_contrastive")
    output = tmp_path / "run"
    argv = ["--preset", TINY_PRESET, "--data", "shapes:96", "--epochs", "2",
            "--steps-per-epoch", "2", "--batch-size", "16", "--output", str(output),
            "--verbose", "0", "--distribute"]
    report = run_two_epochs(recipe, argv, output, RESUME_ON_THIS_BACKEND)

    with open(output / "report.json") as f:
        written = json.load(f)
    assert written == report
    for key in ("image_to_text_recall@1", "image_to_text_recall@5", "text_to_image_recall@1",
                "text_to_image_recall@5", "zero_shot_accuracy", "zero_shot_top5_accuracy"):
        assert 0.0 <= report[key] <= 1.0, key
    assert report["image_to_text_recall@5"] >= report["image_to_text_recall@1"]
    assert report["zero_shot_top5_accuracy"] >= report["zero_shot_accuracy"]
    prompts = report["zero_shot_by_prompt"]
    assert list(prompts)[:2] == ["{}", "a {}"] and list(prompts)[2].startswith("ensemble of ")
    assert all(0.0 <= v <= 1.0 for v in prompts.values())
    assert report["comparison_images"] == {"probe_pool": 5, "test": 5}
    assert np.isfinite(report["loss"]) and report["loss"] > 0
    assert report["pairs_per_second"] > 0 and report["wall_time_s"] > 0
    assert report["bad_files"] == 0 and report["backend"] == keras.backend.backend()
    assert (report["num_train"], report["num_validation"]) == (86, 10)  # --validation-split 0.1
    assert report["context_length"] == 16 and len(report["class_names"]) == 6
    assert os.listdir(output / "logs") and (output / "checkpoints" / "best.weights.h5").exists()

    # The saved preset reloads and scores exactly what the report says.
    model = CLIP.from_preset(str(output / "preset"))
    assert model.text_encoder.context_length == 16
    model.compile(total_steps=10, warmup_steps=1)
    from keras_vtx.data import load_pair_data
    from keras_vtx.models.clip.clip_tokenizer import CLIPTokenizer

    data = load_pair_data("shapes:96", image_size=32, batch_size=16, validation_split=0.1,
                          tokenizer=CLIPTokenizer(sequence_length=16))
    loss = model.evaluate(data.validation, return_dict=True, verbose=0)["loss"]
    np.testing.assert_allclose(loss, report["loss"], rtol=1e-4)


def test_recipe_rejects_bad_flags():
    recipe = load_recipe("clip_contrastive")
    for argv in (["--epochs", "0"], ["--precision", "float8"], ["--context-length", "1"],
                 ["--warmup-fraction", "1.0"], ["--captions-per-image", "first"]):
        with pytest.raises(SystemExit):
            recipe.parse_args(argv)
    args = recipe.parse_args([])
    assert (args.preset, args.precision, args.augment) == ("clip_pico_patch4_32", "float32", True)
    assert args.data.startswith("shapes")


def test_paper_comparisons_probe_the_first_half_and_score_the_second():
    from types import SimpleNamespace

    from keras_vtx.models.clip.clip_tokenizer import CLIPTokenizer

    recipe = load_recipe("clip_contrastive")
    model = CLIP.from_preset(TINY_PRESET)
    names = ("circle", "square", "triangle")
    labels = np.tile(np.arange(3), 8)  # 4 of each class per half
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (24, 32, 32, 3)).astype("float32")
    # Embeddings that give the class away: the probes must find it, zero-shot cannot.
    embeddings = np.eye(3)[labels] + 0.01 * rng.standard_normal((24, 3))
    data = SimpleNamespace(validation_labels=labels, class_names=names)
    result = recipe.paper_comparisons(model, CLIPTokenizer(sequence_length=16), data, images,
                                      embeddings, "shapes")
    assert result["comparison_images"] == {"probe_pool": 12, "test": 12}
    probes = result["few_shot_probe"]
    assert probes["shots"] == [1, 2, 4] and probes["seeds"] == recipe.PROBE_SEEDS
    assert probes["mean_accuracy"]["1"] == 1.0 and probes["std_accuracy"]["4"] == 0.0
    assert set(result["zero_shot_by_prompt"]) == {"{}", "a {}", "ensemble of 36"}
