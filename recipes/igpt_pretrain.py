"""Pre-trains Image GPT on palette-quantised pixels, then probes its layers and completes images.

    python recipes/igpt_pretrain.py                           # shapes, CPU minutes
    python recipes/igpt_pretrain.py --objective bert          # masked-pixel prediction
    KERAS_BACKEND=jax python recipes/igpt_pretrain.py --epochs 10
    python recipes/igpt_pretrain.py --data dir:/data/flowers --image-size 32 \\
        --preset igpt_small --num-colors 512 --precision mixed_bfloat16 --distribute

`--data` takes `shapes`, `shapes:N` (N images), `dir:PATH` (one sub-folder per
class, or `train/` and `val/` folders of them) or `tfds:NAME`; images are
downsampled to `--image-size` (the paper's 32, 48 or 64, or the preset's). The
run follows Chen et al. 2020, "Generative Pretraining from Pixels":

1. a k-means colour palette of `--num-colors` clusters is fitted on training
   pixels (or read with `--palette PATH`) and every image becomes a sequence of
   palette indices in raster order;
2. the model is pre-trained with `fit()` on that pipeline, autoregressively
   (next pixel) or with `--objective bert` (15% of the pixels masked), reporting
   the loss and bits per dimension for the training and validation sets;
3. a linear probe is fitted on every layer's average-pooled features against
   the class labels (the paper's section 4.1); with BERT, also on features
   averaged over several random maskings (the paper's ensembling);
4. the top half of validation images is given and the bottom half sampled
   (`ImageGPT.generate`), next to the originals, and a few images are sampled
   unconditionally (with BERT, the masked bottom half is filled in one pass).

It writes to `--output`: the palette (`palette.npy`), TensorBoard logs
(`logs/`), the best weights by validation loss (`checkpoints/`), a backup
that an interrupted run resumes from when started again with the same
arguments (`backup/`), `probes.json` and `probe_accuracy.png` (accuracy by
layer), `completions.png` and `samples.png`, the final model as a preset
directory (`preset/`, reload with `ImageGPT.from_preset(path)`; it holds the
palette) and `report.json`. `--tiny` shrinks everything for a smoke test. On several
hosts the same command runs once per host with Keras' `KERAS_DISTRIBUTION_*` variables
(docs/distribute.md): every process fits the same palette, and process 0 probes, samples
and writes the outputs.

The default data are the shapes set drawn large and flat on a coloured background
(`--shape-size 0.6,0.95 --shape-noise 0 --shape-background color`): 4,000 images of
16x16 (3,200 to train). The small noisy shapes of the set's own defaults gave a 4-layer
model nothing class-related to learn in CPU minutes (every probe at chance after 750
steps); on the dark background the pooled input embeddings alone separated the classes
(a bright shape on dark is a pixel template), and the coloured background, where which
colour is the shape changes from image to image, leaves the shape to the transformer.
Measured with TensorFlow on 2 CPU cores, the defaults (`igpt_pico_shapes`, 0.83M
parameters, 16 colours, 12 epochs of 200 steps of 16): 14.3 min of wall time on cores
shared with other work (8.1 min on idle ones, the same figures), 0.078 validation bits per dimension (a uniform guess over 16
colours: 1.33); completions continue the given shapes. The probes peak inside the
network: 0.18 at the embeddings (chance 0.17), 0.82 at block 1, 0.70-0.73 at blocks 2-4
(docs/igpt.md, "What the default measures").
"""

import argparse
import json
import os
import sys
import time

# Run from a checkout without installing the package: `python recipes/...`.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from recipes._common import (  # noqa: E402
    first_examples,
    process_output,
    replicas_and_scope,
    start_processes,
    training_callbacks,
    training_schedule,
)

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
OBJECTIVES = ("autoregressive", "bert")
# `--objective both` trains one model per objective, in this order, on the same palette.
OBJECTIVE_CHOICES = OBJECTIVES + ("both",)
# What `--tiny` changes (flags given explicitly still win): the test preset and a
# couple of small batches, so that the whole recipe runs in seconds.
TINY_DEFAULTS = {
    "preset": "igpt_tiny_test",
    "data": "shapes:48",
    "epochs": 1,
    "batch_size": 8,
    "steps_per_epoch": 2,
    "palette_images": 32,
    "palette_iterations": 5,
    "probe_examples": 32,
    "probe_regularization": 1e-3,
    "probe_masks": 2,
    "completions": 2,
    "samples_per_image": 1,
    "samples": 2,
    "jit_compile": "off",  # compiling the step with XLA costs more than two tiny steps
}


def _parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", default="igpt_pico_shapes",
                        help="a preset name, a preset directory (keras_vtx or transformers) "
                             "or an hf:// address")
    parser.add_argument("--data", default="shapes:4000",
                        help="shapes | shapes:N | dir:PATH | tfds:NAME")
    parser.add_argument("--shape-size", default="0.6,0.95",
                        help="shapes data only: LOW,HIGH extent of the drawn shapes as a "
                             "fraction of the image side (the shapes set's own is 0.3,0.8)")
    parser.add_argument("--shape-noise", type=float, default=0.0,
                        help="shapes data only: standard deviation of the pixel noise (the "
                             "shapes set's own is 10)")
    parser.add_argument("--shape-background", choices=("dark", "color"), default="color",
                        help="shapes data only: a dark background (the shapes set's own) or "
                             "a named colour, the shapes in the other colours")
    parser.add_argument("--validation-split", type=float, default=0.2,
                        help="fraction held out when the data has no validation split")
    parser.add_argument("--image-size", type=int, default=None,
                        help="side of the downsampled images (default: the preset's)")
    parser.add_argument("--objective", choices=OBJECTIVE_CHOICES, default="autoregressive",
                        help="'both' pre-trains an autoregressive and a BERT model in turn "
                             "(OUTPUT/autoregressive, OUTPUT/bert; same palette and data) and "
                             "draws their probes side by side")
    parser.add_argument("--mask-rate", type=float, default=0.15,
                        help="fraction of the pixels masked by the BERT objective")
    parser.add_argument("--num-colors", type=int, default=None,
                        help="palette size K (default: the preset's; the paper's is 512)")
    parser.add_argument("--palette", default="auto",
                        help="'fit' (k-means on training pixels), 'preset' (the preset's "
                             "own), a saved palette (.npy, .json, or a transformers "
                             "preprocessor_config.json or its folder), or 'auto': the "
                             "palette of a trained preset directory, else fitted")
    parser.add_argument("--palette-images", type=int, default=2000,
                        help="training images whose pixels the palette is fitted on")
    parser.add_argument("--palette-iterations", type=int, default=None,
                        help="k-means iterations (default: ColorPalette.fit's)")
    parser.add_argument("--no-flip", dest="flip", action="store_false",
                        help="no random horizontal flips of the training images")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16,
                        help="the global batch size (all processes together)")
    parser.add_argument("--learning-rate", type=float, default=2e-3,
                        help="peak learning rate, after the linear warm-up")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup-fraction", type=float, default=0.1,
                        help="fraction of the steps spent warming up the learning rate")
    parser.add_argument("--probe-examples", type=int, default=1000,
                        help="training images whose features train the linear probes "
                             "(all validation images test them)")
    parser.add_argument("--probe-regularization", type=float, default=None,
                        help="the probes' L2 strength (default: swept per layer, 1e-6 to 1)")
    parser.add_argument("--probe-masks", type=int, default=4,
                        help="BERT only: random maskings averaged by the ensembled probe")
    parser.add_argument("--completions", type=int, default=6,
                        help="validation images completed from their top half")
    parser.add_argument("--samples-per-image", type=int, default=3,
                        help="completions sampled for each of those images")
    parser.add_argument("--samples", type=int, default=8,
                        help="images sampled unconditionally (autoregressive only)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--jit-compile", choices=("auto", "on", "off"), default="auto",
                        help="XLA for the training step: auto is on for TensorFlow and JAX")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32")
    parser.add_argument("--distribute", action="store_true",
                        help="train on every local accelerator "
                             "(keras_vtx.distribute.get_distribution())")
    parser.add_argument("--output", default=os.path.join("runs", "igpt_pretrain"))
    parser.add_argument("--steps-per-epoch", type=int, default=None,
                        help="train this many batches per epoch (default: one pass)")
    parser.add_argument("--tiny", action="store_true",
                        help="a seconds-long smoke test: " + ", ".join(
                            f"--{k.replace('_', '-')} {v}" for k, v in TINY_DEFAULTS.items()))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", default="auto",
                        help="Keras verbosity: auto, 0, 1 (progress bar) or 2")
    return parser


def parse_args(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.tiny:
        parser.set_defaults(**TINY_DEFAULTS)
        args = parser.parse_args(argv)
    for name in ("image_size", "num_colors", "epochs", "batch_size", "steps_per_epoch",
                 "palette_images", "palette_iterations", "probe_examples", "probe_masks",
                 "samples_per_image", "top_k"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive; received {value}")
    for name in ("completions", "samples"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0; received {getattr(args, name)}")
    if args.num_colors is not None and args.num_colors < 2:
        parser.error(f"--num-colors must be at least 2; received {args.num_colors}")
    if not 0 < args.mask_rate < 1:
        parser.error(f"--mask-rate must be in (0, 1); received {args.mask_rate}")
    if not 0 < args.validation_split < 1:
        parser.error(f"--validation-split must be in (0, 1); received {args.validation_split}")
    if not 0 <= args.warmup_fraction < 1:
        parser.error(f"--warmup-fraction must be in [0, 1); received {args.warmup_fraction}")
    if args.probe_regularization is not None and args.probe_regularization < 0:
        parser.error("--probe-regularization must be >= 0; received "
                     f"{args.probe_regularization}")
    if not args.temperature > 0:
        parser.error(f"--temperature must be positive; received {args.temperature}")
    try:
        low, high = (float(v) for v in args.shape_size.split(","))
    except ValueError:
        parser.error(f"--shape-size must be LOW,HIGH; received {args.shape_size!r}")
    if not 0 < low <= high <= 1:
        parser.error(f"--shape-size must have 0 < LOW <= HIGH <= 1; received {args.shape_size!r}")
    if args.shape_noise < 0:
        parser.error(f"--shape-noise must be >= 0; received {args.shape_noise}")
    args.shapes_options = ({"size_range": (low, high), "noise": args.shape_noise,
                            "background": args.shape_background}
                           if args.data.split(":")[0] == "shapes" else None)
    if args.verbose != "auto":
        args.verbose = int(args.verbose)
    return args


def _resuming(output):
    backup = os.path.join(output, "backup")
    return os.path.isdir(backup) and bool(os.listdir(backup))


def fit_palette(args, image_size, num_colors):
    """Fits a palette on the pixels of the first `--palette-images` training images."""
    from keras_vtx.data import fit_palette as fit_on_data

    options = {} if args.palette_iterations is None else {"iterations": args.palette_iterations}
    return fit_on_data(args.data, num_colors=num_colors, image_size=image_size, seed=args.seed,
                       max_images=args.palette_images, validation_split=args.validation_split,
                       shapes_options=args.shapes_options, **options)


def choose_palette(args, model, output):
    """The palette of this run and where it came from; also saved as `output/palette.npy`.

    `--palette auto` fits one for a named preset (random weights: its palette, if
    any, was never trained on) and keeps the palette of a trained preset directory.
    A resumed run reads the palette saved under `--output`; every process of a
    multi-process run fits the same one (on the whole training split, same seed).
    """
    from keras_vtx.models.igpt.color_palette import ColorPalette
    from keras_vtx.models.presets import resolve_preset

    saved = os.path.join(args.output, "palette.npy")
    mode = args.palette
    if mode == "auto":
        named = resolve_preset(args.preset)[0] == "name"
        mode = "preset" if model.palette is not None and not named else "fit"
    if _resuming(args.output) and os.path.exists(saved) and mode in ("fit", "preset"):
        # The interrupted run's palette: the weights being restored were trained on it.
        palette, source = ColorPalette.load(saved), "resumed"
    elif mode == "preset":
        if model.palette is None:
            raise ValueError(f"--palette preset: {args.preset!r} has no palette.")
        palette, source = model.palette, "preset"
    elif mode == "fit":
        palette, source = fit_palette(args, model.image_size, model.palette_size), "fitted"
    elif os.path.isdir(mode):  # a transformers checkpoint or image processor folder
        palette, source = ColorPalette.from_transformers(mode), mode
    else:
        palette, source = ColorPalette.load(mode), mode
    if palette.num_colors != model.palette_size:
        raise ValueError(
            f"The palette has {palette.num_colors} colours but the model predicts "
            f"{model.palette_size}; pass --num-colors {palette.num_colors} or another --palette."
        )
    os.makedirs(output, exist_ok=True)
    palette.save(os.path.join(output, "palette.npy"))
    return palette, source


def _grid(rows, path, cell=64, gap=2):
    """Writes rows of uint8 `(S, S, 3)` images as one PNG, each enlarged to `cell` pixels."""
    from PIL import Image

    num_rows, num_cols = len(rows), max(len(r) for r in rows)
    canvas = np.full((num_rows * (cell + gap) + gap, num_cols * (cell + gap) + gap, 3), 255,
                     np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            image = np.asarray(image, np.uint8)
            # Nearest-neighbour enlargement keeps each palette pixel a flat square.
            repeat = max(1, cell // image.shape[0])
            big = image.repeat(repeat, axis=0).repeat(repeat, axis=1)[:cell, :cell]
            top, left = gap + i * (cell + gap), gap + j * (cell + gap)
            canvas[top:top + big.shape[0], left:left + big.shape[1]] = big
    Image.fromarray(canvas).save(path)
    return path


def draw_completions(args, model, palette, validation, output):
    """Top halves of validation images completed by the model, then sampled images."""
    from keras_vtx.analysis import completion_grid, plot_completion_grid

    paths = {}
    if args.completions:
        ids, _ = first_examples(validation, args.completions)
        grid = completion_grid(model, pixel_ids=ids, num_samples=args.samples_per_image,
                               seed=args.seed, temperature=args.temperature, top_k=args.top_k)
        paths["completions"] = plot_completion_grid(
            grid, os.path.join(output, "completions.png"))
    if args.samples and args.objective == "autoregressive":
        sampled = model.generate(num_images=args.samples, temperature=args.temperature,
                                 top_k=args.top_k, seed=args.seed + 1)
        columns = int(np.ceil(np.sqrt(args.samples)))
        rows = [list(sampled[i:i + columns]) for i in range(0, args.samples, columns)]
        paths["samples"] = _grid(rows, os.path.join(output, "samples.png"))
    return paths


def run_probes(args, model, data, output):
    """Linear probes of every layer (features of training images, tested on validation).

    Each layer's features are normalised per position and average-pooled (the
    paper's section 3.3); the probe's L2 strength is swept per layer on a split of
    the training features. With BERT the features are averaged over
    `--probe-masks` random maskings, and the first mask alone is probed too.
    """
    from keras_vtx.analysis import probe_image_gpt

    train = first_examples(data.train, args.probe_examples)
    test = first_examples(data.validation, data.num_validation)
    num_masks = args.probe_masks if args.objective == "bert" else 1
    options = {}
    if args.probe_regularization is not None:
        options["regularization"] = args.probe_regularization
    probes = probe_image_gpt(model, train, test, num_masks=num_masks, seed=args.seed,
                             batch_size=args.batch_size, **options)
    result = {
        "num_train": len(train[0]),
        "num_test": len(test[0]),
        "num_masks": num_masks,
        "accuracy_by_layer": {int(k): float(v) for k, v in probes["accuracies"].items()},
        "regularization_by_layer": {int(k): float(v)
                                    for k, v in probes["regularizations"].items()},
        "best_layer": int(probes["best_layer"]),
        "best_accuracy": float(probes["best_accuracy"]),
    }
    if num_masks > 1:
        single = {int(k): float(v) for k, v in probes["single_mask_accuracies"].items()}
        result["single_mask_accuracy_by_layer"] = single
        result["single_mask_best_accuracy"] = max(single.values())
        result["ensemble_gain"] = float(probes["ensemble_gain"])
    with open(os.path.join(output, "probes.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def plot_probes(args, curves, num_classes, path, title=None):
    """The accuracy-by-layer figure, or None when matplotlib is not installed.

    `curves` is `{layer: accuracy}` or `{name: {layer: accuracy}}`.
    """
    try:
        from keras_vtx.analysis.probe_plot import plot_layer_probe_accuracy

        if isinstance(next(iter(curves.values())), dict):
            curves = {name: {int(k): v for k, v in curve.items()}
                      for name, curve in curves.items()}
        return plot_layer_probe_accuracy(
            curves, path, chance=1.0 / num_classes,
            title=title or f"iGPT ({args.objective}) linear probes on {args.data}",
        )
    except ImportError as e:  # matplotlib is optional (the `plot` extra)
        print(f"no probe plot: {e}")
        return None


def main(argv=None, callbacks=None):
    """Runs the recipe with the command-line arguments `argv`.

    Args:
        argv: list of str (default: `sys.argv[1:]`).
        callbacks: extra Keras callbacks, run after the recipe's own.

    Returns:
        The report written to `OUTPUT/report.json`, as a dict.
    """
    args = parse_args(argv)
    # Several processes (one per host, KERAS_DISTRIBUTION_*): started before anything runs.
    start_processes()
    if args.objective == "both":
        return compare_objectives(args, callbacks)
    return train_and_probe(args, callbacks)


def compare_objectives(args, callbacks=None):
    """Both objectives in turn on one palette: the paper's comparison (its figure 4).

    The autoregressive run fits (or reads) the palette; the BERT run reads the
    palette the first one saved, so both models see the same pixel ids. One
    figure draws the autoregressive probes beside BERT's with one mask and
    with `--probe-masks` maskings averaged.
    """
    start = time.perf_counter()
    reports = {}
    for objective in OBJECTIVES:
        sub = argparse.Namespace(**vars(args))
        sub.objective = objective
        sub.output = os.path.join(args.output, objective)
        if objective == "bert":
            first = os.path.join(args.output, OBJECTIVES[0])
            sub.palette = os.path.join(process_output(first), "palette.npy")
        reports[objective] = train_and_probe(sub, callbacks)
    if "probe_accuracy_by_layer" not in reports[OBJECTIVES[0]]:
        return reports  # a process other than 0 of several: process 0 compares
    ar, bert = reports["autoregressive"], reports["bert"]
    curves = {"autoregressive": ar["probe_accuracy_by_layer"]}
    if "single_mask_probe_accuracy_by_layer" in bert:
        curves["BERT, 1 mask"] = bert["single_mask_probe_accuracy_by_layer"]
        curves[f"BERT, {bert['probe_masks']} masks averaged"] = bert["probe_accuracy_by_layer"]
    else:
        curves["BERT"] = bert["probe_accuracy_by_layer"]
    plot = plot_probes(args, curves, ar["num_classes"],
                       os.path.join(args.output, "probe_accuracy.png"),
                       title=f"iGPT linear probes on {args.data}: objectives")
    report = {
        "objective": "both",
        "data": args.data,
        "backend": keras.backend.backend(),
        "num_processes": ar["num_processes"],
        "probe_accuracy_by_layer": {name: dict(curve) for name, curve in curves.items()},
        "best_probe": {name: {"layer": int(max(curve, key=lambda k: (curve[k], -int(k)))),
                              "accuracy": max(curve.values())}
                       for name, curve in curves.items()},
        "probe_plot": plot,
        "reports": {name: os.path.join(args.output, name, "report.json") for name in reports},
        "wall_time_s": time.perf_counter() - start,
    }
    with open(os.path.join(args.output, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    print("; ".join(f"{name}: best layer {best['layer']} ({best['accuracy']:.3f})"
                    for name, best in report["best_probe"].items()))
    return report


def train_and_probe(args, callbacks=None):
    """One pre-training run of `args.objective` with its probes, pictures and report."""
    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    keras.config.set_dtype_policy(args.precision)

    from keras_vtx.data.palette_sequences import load_palette_data
    from keras_vtx.distribute import is_chief, process_count, process_index
    from keras_vtx.models.igpt.image_gpt import ImageGPT

    num_processes = process_count()
    output = process_output(args.output)  # process 0's is --output
    num_replicas, scope = replicas_and_scope(args.distribute or num_processes > 1,
                                             args.batch_size)
    overrides = {"objective": args.objective, "mask_rate": args.mask_rate}
    if args.image_size:
        overrides["sequence_length"] = args.image_size ** 2
    if args.num_colors:
        overrides["vocabulary_size"] = args.num_colors + 1  # + the SOS / [MASK] token
        overrides["palette"] = None  # a palette of another size is replaced below
    with scope():
        model = ImageGPT.from_preset(args.preset, **overrides)
    palette_start = time.perf_counter()
    palette, palette_source = choose_palette(args, model, output)
    palette_seconds = time.perf_counter() - palette_start
    if model.palette != palette:
        with scope():
            model = model.rebuild_with({}, {"palette": palette})

    image_size = model.image_size
    # No zero padding before the random crop: the model would learn black borders.
    data = load_palette_data(
        args.data, palette=palette, image_size=image_size, batch_size=args.batch_size,
        validation_split=args.validation_split, seed=args.seed, train_crop="random",
        padding=0, flip=args.flip, shapes_options=args.shapes_options,
    )
    validation = data.validation
    train, steps_per_epoch, total_steps, warmup_steps = training_schedule(
        args, data, data.train, args.epochs)
    with scope():
        model.compile(
            learning_rate=args.learning_rate,
            weight_decay=args.weight_decay,
            total_steps=total_steps,
            warmup_steps=warmup_steps,
            jit_compile={"on": True, "off": False}.get(args.jit_compile, "auto"),
        )

    fit_callbacks, throughput = training_callbacks(args.output, "val_loss", "min", callbacks)
    with scope():
        history = model.fit(
            train,
            validation_data=validation,
            epochs=args.epochs,
            steps_per_epoch=steps_per_epoch if args.steps_per_epoch else None,
            callbacks=fit_callbacks,
            shuffle=False,  # the tf.data pipeline shuffles, with the seed
            verbose=args.verbose,
        )
        results = model.evaluate(validation, return_dict=True, verbose=0)
    preset = os.path.join(output, "preset")
    if num_processes > 1 and not is_chief():
        print(f"process {process_index()}: trained; process 0 writes the outputs")
        return {"loss": float(results["loss"]),
                "history": {k: [float(v) for v in vs] for k, vs in history.history.items()}}
    model.save_to_preset(preset, overwrite=True)
    if num_processes > 1:
        # The trained weights span every process: process 0 probes and samples a copy of
        # its own, loaded from the preset it wrote (its probe examples are from its shard).
        model = ImageGPT.from_preset(preset)

    probe_start = time.perf_counter()
    probes = run_probes(args, model, data, output)
    probe_seconds = time.perf_counter() - probe_start
    curves = probes["accuracy_by_layer"]
    if "single_mask_accuracy_by_layer" in probes:
        curves = {"1 mask": probes["single_mask_accuracy_by_layer"],
                  f"{probes['num_masks']} masks averaged": curves}
    plot = plot_probes(args, curves, len(data.class_names),
                       os.path.join(output, "probe_accuracy.png"))
    pictures = draw_completions(args, model, palette, validation, output)

    num_layers = model.backbone.num_layers
    report = {
        "preset": args.preset,
        "data": args.data,
        "objective": args.objective,
        "backend": keras.backend.backend(),
        "precision": args.precision,
        "num_replicas": num_replicas,
        "num_processes": num_processes,
        "image_size": image_size,
        "num_colors": palette.num_colors,
        "palette_source": palette_source,
        "palette_time_s": palette_seconds,
        "num_layers": num_layers,
        "num_parameters": int(model.count_params()),
        "num_classes": len(data.class_names),
        "class_names": list(data.class_names),
        "num_train": data.num_train,
        "num_validation": data.num_validation,
        "epochs": args.epochs,
        "epochs_run": throughput.epochs_run,
        "steps_per_epoch": steps_per_epoch,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "loss": float(results["loss"]),
        "bits_per_dim": float(results["bits_per_dim"]),
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        # Layer 0 is the embeddings, layer l the output of block l.
        "probe_accuracy_by_layer": {str(k): v for k, v in probes["accuracy_by_layer"].items()},
        "best_probe_layer": probes["best_layer"],
        "best_probe_accuracy": probes["best_accuracy"],
        "best_probe_layer_is_inner": 0 < probes["best_layer"] < num_layers,
        "probe_time_s": probe_seconds,
        "probe_plot": plot,
        **{f"{name}_png": path for name, path in pictures.items()},
        "train_time_s": throughput.seconds,
        "wall_time_s": time.perf_counter() - start,
        "images_per_second": throughput.batches * args.batch_size / max(throughput.seconds,
                                                                         1e-9),
        "bad_files": data.bad_files.count,
        "bad_file_examples": list(data.bad_files.examples),
    }
    if "ensemble_gain" in probes:
        report["probe_masks"] = probes["num_masks"]
        report["single_mask_best_probe_accuracy"] = probes["single_mask_best_accuracy"]
        report["single_mask_probe_accuracy_by_layer"] = {
            str(k): v for k, v in probes["single_mask_accuracy_by_layer"].items()}
        report["ensemble_gain"] = probes["ensemble_gain"]
    with open(os.path.join(output, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    summary = (f"{report['wall_time_s'] / 60:.1f} min; validation bits/dim "
               f"{report['bits_per_dim']:.3f}; best linear probe: layer "
               f"{report['best_probe_layer']} of {num_layers} (0 = embeddings), accuracy "
               f"{report['best_probe_accuracy']:.3f}")
    if "ensemble_gain" in report:
        summary += (f" with {report['probe_masks']} maskings averaged "
                    f"({report['ensemble_gain']:+.3f} over one mask)")
    print(summary)
    return report


if __name__ == "__main__":
    main()
