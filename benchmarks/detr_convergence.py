"""How fast DETR's options learn: held-out COCO AP against training steps, on the shapes set.

Each configuration trains `detr_pico_shapes` from scratch with the same data, seed, batches and
schedule, and is evaluated (pycocotools AP and AP50 on the 200 held-out images) every `--every`
steps; one worker process per configuration. The table and `--plot` compare them.

    python benchmarks/detr_convergence.py                          # every configuration
    python benchmarks/detr_convergence.py --configs detr,dn --steps 3000 --every 500
    python benchmarks/detr_convergence.py --plot-only runs/convergence/*.json --plot ap.png

Configurations (`CONFIGS`): plain DETR (learned queries, DETR's frozen batch norm); DN-DETR's
query denoising (`denoising_groups=5`); DAB-DETR's anchor queries (`query_type="anchor"`); both;
denoising with trainable batch norm in the backbone (`norm="batch_norm"`, the preset's own
configuration). The results JSON of each holds its points (steps, training seconds, AP, AP50,
the last epoch's losses).
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAIN = {"query_type": "learned", "denoising_groups": 0, "norm": "frozen_batch_norm"}
CONFIGS = {
    "detr": PLAIN,
    "dn": {**PLAIN, "denoising_groups": 5},
    "anchor": {**PLAIN, "query_type": "anchor"},
    "anchor_dn": {**PLAIN, "query_type": "anchor", "denoising_groups": 5},
    # The preset's own configuration.
    "dn_batch_norm": {**PLAIN, "denoising_groups": 5, "norm": "batch_norm"},
}
LABELS = {
    "detr": "DETR",
    "dn": "+ denoising (DN-DETR)",
    "anchor": "+ anchor queries (DAB-DETR)",
    "anchor_dn": "+ anchors + denoising",
    "dn_batch_norm": "+ denoising + batch norm (preset)",
}


def worker(args):
    """Trains one configuration; prints and writes its points as it goes."""
    sys.path.insert(0, ROOT)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from keras_vtx.data import load_detection_data
    from keras_vtx.metrics import COCOEvaluationCallback
    from keras_vtx.models import DETR

    keras.utils.set_random_seed(args.seed)
    train, validation, info = load_detection_data(
        f"shapes:{args.images}", batch_size=args.batch_size, seed=args.seed,
        max_boxes=args.max_boxes, **json.loads(args.data_options),
    )
    train = train.repeat()
    overrides = {**CONFIGS.get(args.name, {}), **json.loads(args.overrides)}
    model = DETR.from_preset(args.preset, num_classes=info.num_classes, **overrides)
    drop = None if args.lr_drop is None else int(args.lr_drop * args.steps)
    model.compile(learning_rate=args.learning_rate, backbone_learning_rate=args.learning_rate,
                  lr_drop_steps=drop)
    evaluation = COCOEvaluationCallback(validation, info.ground_truth,
                                        category_ids=info.category_ids)
    evaluation.set_model(model)
    record = {"name": args.name, "overrides": overrides, "backend": keras.backend.backend(),
              "args": vars(args), "points": []}
    seconds = 0.0
    for chunk in range(args.steps // args.every):
        start = time.perf_counter()
        history = model.fit(train, steps_per_epoch=args.every, epochs=chunk + 1,
                            initial_epoch=chunk, verbose=0)
        seconds += time.perf_counter() - start
        metrics = evaluation.evaluate()
        point = {"step": (chunk + 1) * args.every, "train_s": round(seconds, 1),
                 "AP": round(metrics["AP"], 4), "AP50": round(metrics["AP50"], 4),
                 "loss": {k: round(float(v[-1]), 4) for k, v in history.history.items()}}
        record["points"].append(point)
        print(json.dumps(point), flush=True)
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
    return record


def plot(records, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for record in records:
        steps = [p["step"] for p in record["points"]]
        label = LABELS.get(record["name"], record["name"])
        for axis, key in zip(axes, ("AP", "AP50")):
            axis.plot(steps, [p[key] for p in record["points"]], marker="o", label=label)
    for axis, key in zip(axes, ("COCO AP (IoU 0.50:0.95)", "AP50")):
        axis.set_xlabel("training steps (batch 16)")
        axis.set_ylabel(key)
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left")
    figure.suptitle("detr_pico_shapes from scratch, held-out shapes (200 images)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def table(records):
    lines = ["| configuration | " + " | ".join(
        f"AP @ {p['step']}" for p in records[0]["points"]) + " | s per 1000 steps |",
        "| --- |" + " --- |" * (len(records[0]["points"]) + 1)]
    for record in records:
        points = record["points"]
        rate = points[-1]["train_s"] / points[-1]["step"] * 1000
        lines.append(f"| {LABELS.get(record['name'], record['name'])} | "
                     + " | ".join(f"{p['AP']:.3f} ({p['AP50']:.2f})" for p in points)
                     + f" | {rate:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--preset", default="detr_pico_shapes")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--lr-drop", type=float, default=None,
                        help="fraction of --steps after which the rate drops tenfold")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--max-boxes", type=int, default=10)
    parser.add_argument("--data-options", default="{}", help="JSON: load_detection_data options")
    parser.add_argument("--overrides", default="{}", help="JSON: more DETR overrides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join("runs", "convergence"))
    parser.add_argument("--plot", default=None, help="write the AP curves to this PNG")
    parser.add_argument("--plot-only", nargs="*", default=None,
                        help="results JSONs to plot and tabulate, without training")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return None
    if args.plot_only is not None:
        paths = [p for pattern in args.plot_only for p in sorted(glob.glob(pattern))]
        records = [json.load(open(p)) for p in paths]
    else:
        os.makedirs(args.out, exist_ok=True)
        records = []
        for name in args.configs.split(","):
            if name not in CONFIGS:
                parser.error(f"--configs: expected names from {list(CONFIGS)}; received {name!r}")
            path = os.path.join(args.out, f"{name}.json")
            forwarded = []
            for option in ("preset", "steps", "every", "batch_size", "learning_rate", "lr_drop",
                           "images", "max_boxes", "data_options", "overrides", "seed"):
                value = getattr(args, option)
                if value is not None:
                    forwarded += ["--" + option.replace("_", "-"), str(value)]
            subprocess.run([sys.executable, os.path.abspath(__file__), *forwarded, "--worker",
                            "--name", name, "--json", path], check=True)
            records.append(json.load(open(path)))
    print(table(records))
    if args.plot:
        plot(records, args.plot)
    return records


if __name__ == "__main__":
    main()
