"""Trains DETR with the set loss; by default a small one on the embedded shapes detection set.

    python recipes/detr_detection.py                          # shapes, CPU minutes
    KERAS_BACKEND=jax python recipes/detr_detection.py --denoising-groups 0
    python recipes/detr_detection.py --preset hf://facebook/detr-resnet-50 \\
        --data /data/my_set/annotations/instances_train.json --epochs 50 --lr-drop 35
    python recipes/detr_detection.py --data /data/coco/annotations/instances_train2017.json \\
        --preset detr_resnet50 --batch-size 64 --epochs 300 --lr-drop 200 \\
        --precision mixed_bfloat16 --distribute

`--data` takes `shapes` or `shapes:N` (N images of 128 x 128 pixels with one to
four shapes of six classes, exported once as COCO files) or the path of a
COCO instances JSON (its images next to it or under `--image-dir`; validation
from `--val-annotations`, the `instances_val*.json` beside an
`instances_train*.json`, or a held-out fraction). Training follows DETR's
schedule (AdamW, the backbone at a tenth of the learning rate, gradient norm
clipped at 0.1, the rate divided by ten after `--lr-drop` epochs) with the
exact Hungarian matcher compiled into the training step. After training the run
reports COCO box AP (pycocotools) on the validation images and writes to
`--output`: TensorBoard logs (`logs/`), the best weights by validation loss
(`checkpoints/`), a backup that an interrupted run resumes from when started
again with the same arguments (`backup/`), the final model as a preset
(`preset/`, reload with `DETR.from_preset(path)`), the detections as a COCO
results JSON (`detections.json`), a few validation images with their predicted
boxes (`detections/*.png`) and `report.json`.

The default (`detr_pico_shapes` from scratch, with DN-DETR's query denoising and
trainable batch norm: 800 shapes images, 12 epochs of 500 steps of 16, learning rate
5e-4 divided by ten after epoch 9) was measured with TensorFlow on 2 CPU cores:
13.7 min, COCO AP 0.626 and AP50 0.872 on the 200 held-out images (16.6 min, AP 0.655
with the previous matcher; docs/detr.md). Plain DETR learns
far slower from scratch (`--denoising-groups 0`; docs/detr.md has the comparison).

On several hosts the same command runs once per host with Keras' `KERAS_DISTRIBUTION_*`
variables (docs/distribute.md): each process reads its share of the training images,
the set loss is normalised by the boxes of the global batch, and process 0 evaluates,
draws and writes the outputs.
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
    measure_and_save,
    replicas_and_scope,
    start_processes,
    training_callbacks,
)

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# The shapes presets' schedule: 6,000 steps of 16, the learning rate divided by ten after
# 4,500 (about 17 minutes on 2 CPU cores with TensorFlow; docs/detr.md).
SHAPES_SCHEDULE = {"epochs": 12, "steps_per_epoch": 500, "lr_drop": 9}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", default="detr_pico_shapes",
                        help="a preset name, a preset directory or an hf:// address")
    parser.add_argument("--data", default="shapes",
                        help="shapes | shapes:N | PATH/instances_*.json")
    parser.add_argument("--image-dir", default=None, help="the training images' folder")
    parser.add_argument("--val-annotations", default=None,
                        help="a validation instances JSON (else found or held out)")
    parser.add_argument("--val-image-dir", default=None)
    parser.add_argument("--validation-split", type=float, default=0.2,
                        help="fraction held out when the data has no validation JSON")
    parser.add_argument("--label-mode", choices=("contiguous", "coco_id"), default=None,
                        help="labels 0..K-1 in category order, or COCO's category ids "
                             "(DETR's 91 classes); default: coco_id for a named published "
                             "preset (91 classes), else contiguous")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"default: {SHAPES_SCHEDULE['epochs']} for the shapes presets, "
                             "else 30")
    parser.add_argument("--lr-drop", type=int, default=None,
                        help="divide the learning rate by 10 after this many epochs "
                             f"(DETR: 200 of 300; default: {SHAPES_SCHEDULE['lr_drop']} for the "
                             "shapes presets, else two thirds of --epochs)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="the global batch size (all processes together)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="the transformer's learning rate (DETR: 1e-4; default: 1e-4, "
                             "or 5e-4 for the small shapes presets)")
    parser.add_argument("--backbone-learning-rate", type=float, default=None,
                        help="the backbone's (default: a tenth of --learning-rate as in DETR, "
                             "whose backbone is pre-trained; the same rate for the shapes "
                             "presets, trained from scratch)")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--clipnorm", type=float, default=0.1,
                        help="global gradient-norm clipping")
    parser.add_argument("--matcher", choices=("auto", "graph", "scipy"), default="auto",
                        help="the exact in-graph matcher, scipy on the host, or auto: in "
                             "the compiled step on TensorFlow and JAX, scipy on PyTorch "
                             "(eager)")
    parser.add_argument("--denoising-groups", type=int, default=None,
                        help="DN-DETR query denoising groups in training (0: plain DETR; "
                             "default: the preset's)")
    parser.add_argument("--query-type", choices=("learned", "anchor"), default=None,
                        help="DETR's learned queries or DAB-DETR's anchor boxes (default: "
                             "the preset's)")
    parser.add_argument("--max-boxes", type=int, default=None,
                        help="targets per image (default: the model's number of queries)")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32")
    parser.add_argument("--distribute", action="store_true",
                        help="train on every local accelerator "
                             "(keras_vtx.distribute.get_distribution())")
    parser.add_argument("--output", default=os.path.join("runs", "detr_detection"))
    parser.add_argument("--steps-per-epoch", type=int, default=None,
                        help="train this many batches per epoch (default: "
                             f"{SHAPES_SCHEDULE['steps_per_epoch']} for the shapes presets, "
                             "else one pass)")
    parser.add_argument("--eval-batches", type=int, default=None,
                        help="evaluate AP on the first N validation batches only")
    parser.add_argument("--draw", type=int, default=4,
                        help="validation images drawn with their detections")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", default="auto",
                        help="Keras verbosity: auto, 0, 1 (progress bar) or 2")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "steps_per_epoch", "lr_drop", "max_boxes",
                 "eval_batches", "learning_rate"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive; received {value}")
    if args.denoising_groups is not None and args.denoising_groups < 0:
        parser.error(f"--denoising-groups must be >= 0; received {args.denoising_groups}")
    if args.draw < 0:
        parser.error(f"--draw must be >= 0; received {args.draw}")
    if not 0 < args.validation_split < 1:
        parser.error(f"--validation-split must be in (0, 1); received {args.validation_split}")
    if args.verbose != "auto":
        args.verbose = int(args.verbose)
    return args


def _is_shapes(data_spec):
    return data_spec.split(":")[0] == "shapes" and not os.path.exists(data_spec)


def draw_examples(model, validation, info, output, count):
    """Draws the first `count` validation images with their detections as PNGs."""
    from keras_vtx.analysis.draw_detections import draw_detections
    from keras_vtx.models.detr import post_process_detections

    paths = []
    folder = os.path.join(output, "detections")
    os.makedirs(folder, exist_ok=True)
    for x, y in validation.as_numpy_iterator():
        sizes = np.asarray(y["size"])
        detections = post_process_detections(model(x, training=False), sizes, threshold=0.5)
        for image, size, found, image_id in zip(x["images"], sizes, detections, y["image_id"]):
            if len(paths) >= count:
                return paths
            height, width = (int(v) for v in size)
            path = os.path.join(folder, f"{int(image_id)}.png")
            draw_detections(image[:height, :width], found["boxes"], found["labels"],
                            found["scores"], class_names=info.class_names, path=path,
                            denormalize=True)
            paths.append(path)
    return paths


def main(argv=None, callbacks=None):
    """Runs the recipe with the command-line arguments `argv`.

    Args:
        argv: list of str (default: `sys.argv[1:]`).
        callbacks: extra Keras callbacks, run after the recipe's own.

    Returns:
        The report written to `OUTPUT/report.json`, as a dict.
    """
    args = parse_args(argv)
    start = time.perf_counter()
    # Several processes (one per host, KERAS_DISTRIBUTION_*): started before anything runs.
    num_processes = start_processes()
    keras.utils.set_random_seed(args.seed)
    keras.config.set_dtype_policy(args.precision)

    from keras_vtx.data import load_detection_data
    from keras_vtx.metrics import COCOEvaluationCallback
    from keras_vtx.models import DETR, get_preset, list_presets

    num_replicas, scope = replicas_and_scope(args.distribute or num_processes > 1,
                                             args.batch_size)

    named = args.preset in list_presets("DETR")
    preset_config = get_preset(args.preset)["config"] if named else {}
    label_mode = args.label_mode
    if label_mode is None:
        label_mode = "coco_id" if preset_config.get("num_classes") == 91 else "contiguous"
    max_boxes = args.max_boxes or preset_config.get("num_queries", 100)
    data_options = {"label_mode": label_mode, "max_boxes": max_boxes}
    if not _is_shapes(args.data):
        data_options.update(image_dir=args.image_dir, val_annotations=args.val_annotations,
                            val_image_dir=args.val_image_dir)
    train, validation, info = load_detection_data(
        args.data, batch_size=args.batch_size, validation_split=args.validation_split,
        seed=args.seed, **data_options,
    )
    small = args.preset.endswith("_shapes")
    schedule = SHAPES_SCHEDULE if small else {}
    epochs = args.epochs or schedule.get("epochs", 30)
    fixed_steps = args.steps_per_epoch or schedule.get("steps_per_epoch")
    steps_per_epoch = fixed_steps or info.steps_per_epoch
    if not steps_per_epoch:
        raise ValueError(
            f"{info.num_train} training images make no full batch of {args.batch_size}; "
            "lower --batch-size."
        )
    if fixed_steps:
        train = train.repeat()  # an endless stream: any number of steps per epoch

    overrides = {"num_classes": info.num_classes, "class_names": info.class_names}
    if label_mode == "coco_id" and preset_config.get("num_classes") == info.num_classes:
        overrides = {}  # keep the published head (and loaded weights) as they are
    for name in ("denoising_groups", "query_type"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    with scope():
        model = DETR.from_preset(args.preset, **overrides)
    if model.num_queries < max_boxes:
        raise ValueError(
            f"--max-boxes {max_boxes} exceeds the model's {model.num_queries} object queries: "
            "every target needs a query."
        )
    learning_rate = args.learning_rate or (5e-4 if small else 1e-4)
    backbone_learning_rate = args.backbone_learning_rate
    if backbone_learning_rate is None:
        backbone_learning_rate = learning_rate if small else learning_rate / 10
    lr_drop = args.lr_drop or schedule.get("lr_drop") or max(1, (2 * epochs) // 3)
    with scope():
        model.compile(
            learning_rate=learning_rate,
            backbone_learning_rate=backbone_learning_rate,
            weight_decay=args.weight_decay,
            global_clipnorm=args.clipnorm,
            lr_drop_steps=lr_drop * steps_per_epoch,
            matcher=args.matcher,
        )

    output = args.output
    fit_callbacks, throughput = training_callbacks(output, "val_loss", "min", callbacks)
    with scope():
        history = model.fit(
            train,
            validation_data=validation,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch if fixed_steps else None,
            callbacks=fit_callbacks,
            shuffle=False,  # the tf.data pipeline shuffles, with the seed
            verbose=args.verbose,
        )

    def measure(trained):
        """COCO box AP of the held-out images (and the drawings), with the time it took."""
        evaluation = COCOEvaluationCallback(
            validation, info.ground_truth,
            category_ids=info.category_ids,
            max_batches=args.eval_batches,
            results_path=os.path.join(output, "detections.json"),
        )
        evaluation.set_model(trained)
        eval_start = time.perf_counter()
        metrics = evaluation.evaluate()
        eval_seconds = time.perf_counter() - eval_start
        drawn = draw_examples(trained, validation, info, output, args.draw) if args.draw else []
        return metrics, eval_seconds, drawn

    measured = measure_and_save(model, os.path.join(output, "preset"), measure, scope)
    if measured is None:  # a process other than 0 of several: process 0 writes the outputs
        return {"history": {k: [float(v) for v in vs] for k, vs in history.history.items()}}
    metrics, eval_seconds, drawn = measured

    report = {
        "preset": args.preset,
        "data": args.data,
        "backend": keras.backend.backend(),
        "precision": args.precision,
        "num_replicas": num_replicas,
        "num_processes": num_processes,
        "num_classes": info.num_classes,
        "class_names": list(info.class_names),
        "num_train": info.num_train,
        "num_validation": info.num_validation,
        "epochs": epochs,
        "epochs_run": throughput.epochs_run,
        "steps_per_epoch": steps_per_epoch,
        "batch_size": args.batch_size,
        "learning_rate": learning_rate,
        "backbone_learning_rate": backbone_learning_rate,
        "lr_drop_epoch": lr_drop,
        "matcher": args.matcher,
        "query_type": model.query_type,
        "denoising_groups": model.denoising_groups,
        **metrics,
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "train_time_s": throughput.seconds,
        "eval_time_s": eval_seconds,
        "wall_time_s": time.perf_counter() - start,
        "images_per_second": throughput.batches * args.batch_size / max(throughput.seconds,
                                                                         1e-9),
        "bad_files": info.bad_files.count,
        "bad_file_examples": list(info.bad_files.examples),
        "truncated_images": len(info.truncated_images),
        "drawn": drawn,
    }
    with open(os.path.join(output, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(f"COCO box AP {metrics['AP']:.3f}, AP50 {metrics['AP50']:.3f}, "
          f"AP75 {metrics['AP75']:.3f} on {info.num_validation} validation images "
          f"({report['wall_time_s'] / 60:.1f} min)")
    return report


if __name__ == "__main__":
    main()
