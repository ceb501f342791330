"""The Image GPT recipe end to end, tiny: palette, pre-training, probes, pictures, preset."""

import json
import os

import keras
import numpy as np
import pytest
from PIL import Image

from keras_vtx.models.igpt.color_palette import ColorPalette
from keras_vtx.models.igpt.image_gpt import ImageGPT
from tests.recipe_helpers import load_recipe, run_two_epochs

# One tiny run per session: interrupted then resumed on PyTorch (eager: the second run
# costs no new compile; see `run_two_epochs`), the BERT objective on JAX, autoregressive
# straight through on TensorFlow. The model's own tests cover both objectives on every backend.
BACKEND = keras.backend.backend()
RESUME_ON_THIS_BACKEND = BACKEND == "torch"
OBJECTIVE = "bert" if BACKEND == "jax" else "autoregressive"


def _png_shape(path):
    with Image.open(path) as image:
        return image.size


def _check_outputs(output, report, objective):
    with open(output / "report.json") as f:
        assert json.load(f) == report
    assert report["objective"] == objective and report["backend"] == keras.backend.backend()
    assert (report["image_size"], report["num_colors"]) == (8, 16)  # igpt_tiny_test
    assert report["bad_files"] == 0 and report["num_classes"] == 6
    assert (report["num_train"], report["num_validation"]) == (38, 10)  # 20% of shapes:48
    # A uniform guess over 16 colours costs log2(16) / 3 bits per RGB sub-pixel.
    assert 0 < report["bits_per_dim"] < 1.05 * np.log2(16) / 3
    history = report["history"]
    assert {"loss", "bits_per_dim", "val_loss", "val_bits_per_dim"} <= set(history)
    # Bits per dimension are nats per sub-pixel over ln 2 (full training batches; the
    # validation set ends with a smaller batch, which the two means weigh differently).
    np.testing.assert_allclose(history["bits_per_dim"], np.array(history["loss"]) / (
        3 * np.log(2)), rtol=1e-5)
    np.testing.assert_allclose(report["bits_per_dim"], report["loss"] / (3 * np.log(2)),
                               rtol=1e-2)
    assert os.listdir(output / "logs") and (output / "checkpoints" / "best.weights.h5").exists()

    with open(output / "probes.json") as f:
        probes = json.load(f)
    accuracies = probes["accuracy_by_layer"]
    assert report["num_layers"] == 2 and list(accuracies) == ["0", "1", "2"]  # 0: embeddings
    assert accuracies == report["probe_accuracy_by_layer"]
    assert all(0.0 <= a <= 1.0 for a in accuracies.values())
    assert report["best_probe_accuracy"] == max(accuracies.values())
    assert accuracies[str(report["best_probe_layer"])] == report["best_probe_accuracy"]
    assert (probes["num_train"], probes["num_test"]) == (32, 10)
    assert _png_shape(report["probe_plot"]) == (600, 400)

    # Two validation images: half given, one completion, the original; one inch at
    # 100 dpi per image (plot_completion_grid).
    assert _png_shape(report["completions_png"]) == (3 * 100, 2 * 100)

    # The palette is saved on its own and inside the preset, which reloads.
    palette = ColorPalette.load(str(output / "palette.npy"))
    model = ImageGPT.from_preset(str(output / "preset"))
    assert model.objective == objective
    np.testing.assert_allclose(model.palette.clusters, palette.clusters)
    return model


# Fits a palette, trains, probes 3 layers and samples: ~15-40 s per run on 2 CPU cores.
@pytest.mark.slow
def test_recipe_trains_probes_draws_and_saves_a_reloadable_preset(tmp_path):
    recipe = load_recipe("igpt_pretrain")
    output = tmp_path / "run"
    argv = ["--tiny", "--objective", OBJECTIVE, "--epochs", "2", "--output", str(output),
            "--verbose", "0", "--distribute"]
    report = run_two_epochs(recipe, argv, output, RESUME_ON_THIS_BACKEND)
    # The resumed run keeps the palette the interrupted one fitted and saved.
    assert report["palette_source"] == ("resumed" if RESUME_ON_THIS_BACKEND else "fitted")
    model = _check_outputs(output, report, OBJECTIVE)

    if OBJECTIVE == "bert":
        assert report["probe_masks"] == 2 and "samples_png" not in report  # BERT can't sample
        assert report["ensemble_gain"] == pytest.approx(
            report["best_probe_accuracy"] - report["single_mask_best_probe_accuracy"])
        return
    assert _png_shape(report["samples_png"]) == (2 + 2 * 66, 2 + 66)  # 2 samples, 1 row
    # The saved model scores the validation set as the report says.
    from keras_vtx.data.palette_sequences import load_palette_data

    data = load_palette_data("shapes:48", palette=model.palette, image_size=8, batch_size=8,
                             shapes_options={"size_range": (0.6, 0.95), "noise": 0.0,
                                             "background": "color"})
    model.compile()
    results = model.evaluate(data.validation, return_dict=True, verbose=0)
    np.testing.assert_allclose(results["bits_per_dim"], report["bits_per_dim"], rtol=1e-4)


# Two tiny runs (~30-60 s); one backend is enough: each objective's run is tested above.
@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="the two runs once, on TensorFlow")
def test_both_objectives_share_the_palette_and_draw_one_figure(tmp_path):
    recipe = load_recipe("igpt_pretrain")
    output = tmp_path / "both"
    report = recipe.main(["--tiny", "--objective", "both", "--output", str(output),
                          "--verbose", "0", "--completions", "0", "--samples", "0"])
    with open(output / "report.json") as f:
        assert json.load(f) == report
    ar, bert = (json.load(open(output / name / "report.json"))
                for name in ("autoregressive", "bert"))
    assert (ar["objective"], bert["objective"]) == ("autoregressive", "bert")
    assert bert["palette_source"] == str(output / "autoregressive" / "palette.npy")
    np.testing.assert_array_equal(np.load(output / "autoregressive" / "palette.npy"),
                                  np.load(output / "bert" / "palette.npy"))
    curves = report["probe_accuracy_by_layer"]
    assert list(curves) == ["autoregressive", "BERT, 1 mask", "BERT, 2 masks averaged"]
    assert curves["autoregressive"] == ar["probe_accuracy_by_layer"]
    assert curves["BERT, 2 masks averaged"] == bert["probe_accuracy_by_layer"]
    assert curves["BERT, 1 mask"] == bert["single_mask_probe_accuracy_by_layer"]
    for name, best in report["best_probe"].items():
        assert best["accuracy"] == max(curves[name].values())
        assert curves[name][str(best["layer"])] == best["accuracy"]
    assert _png_shape(report["probe_plot"]) == (600, 400)


def test_recipe_flags():
    recipe = load_recipe("igpt_pretrain")
    for argv in (["--epochs", "0"], ["--precision", "float8"], ["--objective", "gpt"],
                 ["--num-colors", "1"], ["--mask-rate", "1.5"], ["--samples", "-1"],
                 ["--temperature", "0"], ["--validation-split", "1"],
                 ["--shape-size", "0.9,0.5"], ["--shape-size", "big"], ["--shape-noise", "-1"],
                 ["--shape-background", "blue"]):
        with pytest.raises(SystemExit):
            recipe.parse_args(argv)
    args = recipe.parse_args([])
    assert (args.preset, args.data, args.objective, args.precision) == (
        "igpt_pico_shapes", "shapes:4000", "autoregressive", "float32")
    # The coloured background is what puts the best probe inside the network (docs/igpt.md).
    assert args.shapes_options == {"size_range": (0.6, 0.95), "noise": 0.0,
                                   "background": "color"}
    assert recipe.parse_args(["--shape-background", "dark"]).shapes_options["background"] == (
        "dark")
    assert recipe.parse_args(["--data", "dir:/x"]).shapes_options is None
    # --tiny changes the defaults, and explicit flags still win over it.
    tiny = recipe.parse_args(["--tiny", "--batch-size", "4"])
    assert (tiny.preset, tiny.batch_size, tiny.epochs) == ("igpt_tiny_test", 4, 1)
