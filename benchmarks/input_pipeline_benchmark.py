"""Measures the tf.data input pipeline's images/s against a model's training step rate.

    python benchmarks/input_pipeline_benchmark.py                      # 512 JPEGs, 224 px
    python benchmarks/input_pipeline_benchmark.py --model-rate 2643    # vs a measured step rate
    python benchmarks/input_pipeline_benchmark.py --quick              # smoke run

Writes synthetic JPEGs (ImageNet-like 500 x 375, random content) to a temporary folder and
times three pipelines over them, side by side in one process (passes interleaved), all with
ViT's training augmentation (random resized crop to 224, flip) and batches of 64:

- `keras_vtx`: `keras_vtx.data.dataset_from_files`, the pipeline the recipes use: `tf.io`
  decoding in the graph, each file tried in a one-element dataset with `ignore_errors()`
  and retried with PIL when it fails, which is what lets it skip and name an unreadable
  file instead of stopping a long run.
- `keras_vtx, PIL only`: the same pipeline decoding every file with PIL through
  `tf.numpy_function` (what keras_vtx did before the in-graph path).
- `tf.io`: a plain tf.data pipeline decoding with `tf.io.decode_jpeg` (no bad-file policy)
  with the same augmentation (antialiased resize, per-image flip), as a reference for what
  this host can do without the bad-file policy.

The table gives images/s (median of the timed passes after a warm-up pass), the CPU time
per image (process CPU time over a pass, all threads: steadier than images/s on a shared
machine), and how many cores at that cost it takes to keep up with `--model-rate` images/s
(default: ViT-B/16 bf16 training with keras_vtx on JAX, measured on one H200,
docs/benchmarks.md).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H200_VIT_B16_TRAIN = 2643.0  # images/s, docs/benchmarks.md


def write_jpegs(folder, count, size, seed=0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        # Smooth random images compress like photos (pure noise would not).
        small = rng.integers(0, 256, (size[1] // 25, size[0] // 25, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize(size, Image.BILINEAR)
        path = os.path.join(folder, f"{i:05d}.jpg")
        image.save(path, quality=90)
        paths.append(path)
    return paths


def keras_vtx_pipeline(paths, image_size, batch_size):
    from keras_vtx.data.image_classification import dataset_from_files

    labels = [i % 10 for i in range(len(paths))]
    return dataset_from_files(paths, labels, training=True, image_size=image_size,
                              batch_size=batch_size)


def pil_only_pipeline(paths, image_size, batch_size):
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    from keras_vtx.data import image_classification

    def read(path):
        with Image.open(path.decode()) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)

    def pil_decoder(report, bad_files):
        def decode(path, label):
            image = tf.numpy_function(read, [path], tf.uint8, stateful=False)
            image.set_shape((None, None, 3))
            return image, label

        return lambda dataset: dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE)

    original = image_classification._decoder
    image_classification._decoder = pil_decoder
    try:
        return keras_vtx_pipeline(paths, image_size, batch_size)
    finally:
        image_classification._decoder = original


def tf_io_pipeline(paths, image_size, batch_size):
    import tensorflow as tf

    def load(path, label):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            tf.shape(image), tf.zeros((1, 0, 4)), area_range=(0.08, 1.0),
            aspect_ratio_range=(3 / 4, 4 / 3), min_object_covered=0.0,
            use_image_if_no_bounding_boxes=True)
        image = tf.slice(image, begin, size)
        image = tf.image.resize(image, (image_size, image_size), antialias=True)
        return tf.image.random_flip_left_right(image), label

    labels = [i % 10 for i in range(len(paths))]
    dataset = tf.data.Dataset.from_tensor_slices((paths, labels)).shuffle(len(paths))
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def time_pass(dataset):
    """(images/s, CPU ms per image) of one full pass over `dataset`."""
    start, cpu, images = time.perf_counter(), time.process_time(), 0
    for x, _ in dataset:
        images += int(x.shape[0])
    return (images / (time.perf_counter() - start),
            1000 * (time.process_time() - cpu) / images)


PIPELINES = (("keras_vtx", keras_vtx_pipeline), ("keras_vtx, PIL only", pil_only_pipeline),
             ("tf.io", tf_io_pipeline))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--model-rate", type=float, default=H200_VIT_B16_TRAIN,
                        help="the model's training images/s to compare with")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.image_size, args.batch, args.passes = 16, 32, 4, 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    records = []
    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(folder, args.images, (500, 375))
        datasets = {name: build(paths, args.image_size, args.batch) for name, build in PIPELINES}
        for dataset in datasets.values():
            time_pass(dataset)  # warm-up: tracing, autotuning, file cache
        passes = {name: [] for name in datasets}
        for _ in range(args.passes):  # interleaved, so that a noisy moment hits all alike
            for name, dataset in datasets.items():
                passes[name].append(time_pass(dataset))
        for name, measured in passes.items():
            rate = statistics.median(r for r, _ in measured)
            cpu_ms = statistics.median(c for _, c in measured)
            records.append(dict(pipeline=name, images_per_s=rate, cpu_ms_per_image=cpu_ms,
                                cpu_cores=cores, cores_to_feed_model=args.model_rate * cpu_ms / 1000,
                                model_rate=args.model_rate, image_size=args.image_size,
                                batch=args.batch, images=args.images))
    print(f"{args.images} JPEGs (500x375) -> {args.image_size} px random resized crop + flip, "
          f"batch {args.batch}, {cores} CPU cores; model step rate {args.model_rate:,.0f} images/s")
    header = (f"{'pipeline':<21}{'images/s':>10}{'CPU ms/image':>14}"
              f"{'cores to feed model':>21}")
    print(header)
    print("-" * len(header))
    for r in records:
        print(f"{r['pipeline']:<21}{r['images_per_s']:>10.0f}{r['cpu_ms_per_image']:>14.2f}"
              f"{r['cores_to_feed_model']:>21.1f}")
    by_name = {r["pipeline"]: r for r in records}
    for other in ("keras_vtx, PIL only", "tf.io"):
        print(f"CPU time per image, keras_vtx / {other}: "
              f"{by_name['keras_vtx']['cpu_ms_per_image'] / by_name[other]['cpu_ms_per_image']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)
    return records


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    main()
