"""DETR batch padding: size buckets against DETR's own per-batch padding, side by side.

    python benchmarks/detr_padding_benchmark.py              # detr_tiny_test, 40 steps, 256 px
    python benchmarks/detr_padding_benchmark.py --quick      # smoke run
    KERAS_BACKEND=jax python benchmarks/detr_padding_benchmark.py --steps 80

A compiled training step (XLA on JAX and TensorFlow) is compiled once per input shape, so
how batches of differently sized images are padded decides how many compilations a run
pays for. This script writes a COCO-format set of images of random sizes and orientations
(the embedded shapes drawings, resized), then runs `fit()` on the same model from the same
weights for the same number of steps under two padding policies of
`keras_vtx.data.coco_detection_dataset`:

- `per batch`: DETR's batching, each batch padded to its largest image, rounded up to
  `pad_multiple` (`pad_buckets=None`, no orientation grouping);
- `buckets`: the default, `pad_buckets="auto"` (landscape, portrait, square) with the
  training images grouped by orientation.

It prints, per policy, the distinct batch shapes (each one a compilation), the share of
padded pixels, the wall time of the whole fit (compilations included) and of the steps
after the first epoch, and the ratio per batch / buckets.
"""

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_mixed_sizes(folder, count, min_side, max_side, seed=0):
    """The shapes detection set, each image resized to a random size and orientation."""
    import numpy as np
    from PIL import Image

    from keras_vtx.data.shapes import export_shapes_coco

    path, image_dir = export_shapes_coco(folder, count, image_size=max_side, seed=seed)
    with open(path) as f:
        coco = json.load(f)
    rng = np.random.default_rng(seed)
    for image in coco["images"]:
        short = int(rng.integers(min_side, max_side * 3 // 4 + 1))
        long = int(rng.integers(max(short, max_side * 3 // 4), max_side + 1))
        h, w = (short, long) if rng.random() < 0.7 else (long, short)  # COCO: mostly landscape
        file = os.path.join(image_dir, image["file_name"])
        Image.open(file).resize((w, h), Image.BILINEAR).save(file)
        sy, sx = h / image["height"], w / image["width"]
        for annotation in coco["annotations"]:
            if annotation["image_id"] == image["id"]:
                x, y, bw, bh = annotation["bbox"]
                annotation["bbox"] = [x * sx, y * sy, bw * sx, bh * sy]
        image["height"], image["width"] = h, w
    with open(path, "w") as f:
        json.dump(coco, f)
    return path, image_dir


def run_policy(name, options, path, image_dir, args, initial_weights):
    import keras
    import numpy as np

    from keras_vtx.data import coco_detection_dataset
    from keras_vtx.models import DETR

    sizes = dict(scales=tuple(range(args.max_side // 2, args.max_side * 3 // 4 + 1, 8)),
                 max_size=args.max_side, crop_resize_scales=(args.max_side // 2,),
                 crop_size=(args.max_side * 3 // 8, args.max_side * 5 // 8), max_boxes=8)
    dataset, info = coco_detection_dataset(path, image_dir, training=True,
                                           batch_size=args.batch_size, seed=0,
                                           **sizes, **options)
    batches = list(dataset.repeat().take(args.steps).as_numpy_iterator())
    shapes = sorted({tuple(x["images"].shape[1:3]) for x, _ in batches})
    padded = 1 - sum(x["pixel_mask"].sum() for x, _ in batches) / sum(
        x["pixel_mask"].size for x, _ in batches)

    keras.utils.set_random_seed(0)
    model = DETR.from_preset(args.preset, num_classes=info.num_classes)
    model.set_weights(initial_weights)
    model.compile()
    steps_per_epoch = max(1, args.steps // args.epochs)

    class Clock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.starts = []

        def on_epoch_begin(self, epoch, logs=None):
            self.starts.append(time.perf_counter())

    clock = Clock()

    def generator():
        while True:
            yield from batches

    start = time.perf_counter()
    history = model.fit(generator(), steps_per_epoch=steps_per_epoch, epochs=args.epochs,
                        callbacks=[clock], verbose=0)
    total = time.perf_counter() - start
    later = time.perf_counter() - clock.starts[1] if len(clock.starts) > 1 else None
    loss = float(np.asarray(history.history["loss"][-1]))
    return dict(policy=name, shapes=[list(s) for s in shapes], distinct_shapes=len(shapes),
                padded_fraction=float(padded), fit_s=total, after_first_epoch_s=later,
                steps=steps_per_epoch * args.epochs, final_loss=loss)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="detr_tiny_test")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40, help="training steps per policy")
    parser.add_argument("--epochs", type=int, default=4, help="the steps are split into these")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-side", type=int, default=256,
                        help="the longest image side (DETR's max_size at this scale)")
    parser.add_argument("--quick", action="store_true", help="a smoke run (8 steps)")
    parser.add_argument("--json", default=None, help="also write the records here")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.steps, args.epochs, args.max_side = 16, 4, 2, 128
    sys.path.insert(0, ROOT)
    import keras
    import numpy as np

    from keras_vtx.models import DETR

    policies = [
        ("per batch", dict(pad_buckets=None, pad_multiple=32, group_by_orientation=False)),
        ("buckets", dict(pad_buckets="auto", pad_multiple=32, group_by_orientation=True)),
    ]
    with tempfile.TemporaryDirectory() as folder:
        path, image_dir = write_mixed_sizes(folder, args.images, args.max_side // 2,
                                            args.max_side)
        keras.utils.set_random_seed(0)
        with open(path) as f:
            num_classes = len(json.load(f)["categories"])
        model = DETR.from_preset(args.preset, num_classes=num_classes)
        weights = model.get_weights()
        # Warm the libraries up (first-call costs outside any compiled step) on another
        # model and a shape neither policy uses, so the first policy timed pays no more.
        model.compile()
        side = args.max_side + 64
        model.train_on_batch(
            {"images": np.zeros((1, side, side, 3), "float32"),
             "pixel_mask": np.ones((1, side, side), "int32")},
            {"boxes": np.full((1, 8, 4), 0.5, "float32"),
             "labels": np.zeros((1, 8), "int32")})
        del model
        records = [run_policy(name, options, path, image_dir, args, weights)
                   for name, options in policies]
    backend = keras.backend.backend()
    print(f"DETR ({args.preset}) on {backend}, batch {args.batch_size}, {records[0]['steps']} "
          f"steps, images up to {args.max_side} px")
    print(f"{'policy':10s} {'shapes':>6s} {'padded':>7s} {'fit s':>8s} {'after epoch 1':>14s}")
    for r in records:
        later = "-" if r["after_first_epoch_s"] is None else f"{r['after_first_epoch_s']:.1f}"
        print(f"{r['policy']:10s} {r['distinct_shapes']:6d} {100 * r['padded_fraction']:6.1f}% "
              f"{r['fit_s']:8.1f} {later:>14s}")
    ratio = records[0]["fit_s"] / records[1]["fit_s"]
    print(f"fit time per batch / buckets: {ratio:.2f}x")
    for r in records:
        r.update(backend=backend, batch_size=args.batch_size, preset=args.preset)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)
    return records


if __name__ == "__main__":
    main()
