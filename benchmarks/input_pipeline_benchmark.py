"""Measures the tf.data input pipeline's images/s against a model's training step rate.

    python benchmarks/input_pipeline_benchmark.py                      # 512 JPEGs, 224 px
    python benchmarks/input_pipeline_benchmark.py --model-rate 2643    # vs a measured step rate
    python benchmarks/input_pipeline_benchmark.py --source-size 341x256  # pre-resized images
    python benchmarks/input_pipeline_benchmark.py --quick              # smoke run

Writes synthetic JPEGs (ImageNet-like 500 x 375 unless `--source-size`, random content) to
a temporary folder and times these pipelines over them, side by side in one process (passes interleaved), with
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
- `keras_vtx image-text`: `keras_vtx.data.dataset_from_pairs` over the same JPEGs with
  synthetic captions (CLIP's training crop and the 49,408-token BPE tokenizer), compared with
  CLIP ViT-B/32's training rate (`--clip-rate`); `CLIP tokenizer alone` tokenizes the same
  captions in batches, for the tokenizer's share.

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
H200_CLIP_B32_TRAIN = 6090.0  # pairs/s, docs/benchmarks.md


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

    original = image_classification.image_decoder
    image_classification.image_decoder = pil_decoder
    try:
        return keras_vtx_pipeline(paths, image_size, batch_size)
    finally:
        image_classification.image_decoder = original


def synthetic_captions(count, seed=0):
    """Captions of 6-14 words drawn (Zipf-like) from 2,000 made-up words, like real text."""
    import numpy as np

    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, int(rng.integers(2, 10)))) for _ in range(2000)]
    weights = 1.0 / np.arange(1, len(words) + 1)
    weights /= weights.sum()
    return [" ".join(rng.choice(words, int(rng.integers(6, 15)), p=weights)) + "."
            for _ in range(count)]


def clip_pairs_pipeline(paths, image_size, batch_size):
    from keras_vtx.data import dataset_from_pairs

    return dataset_from_pairs(paths, synthetic_captions(len(paths)), image_size=image_size,
                              batch_size=batch_size, shuffle=True, augment=True)


def clip_tokenizer_pipeline(paths, image_size, batch_size):
    import tensorflow as tf

    from keras_vtx.models.clip.clip_tokenizer import CLIPTokenizer

    tokenizer = CLIPTokenizer()
    dataset = tf.data.Dataset.from_tensor_slices(synthetic_captions(len(paths)))
    dataset = dataset.batch(batch_size, drop_remainder=True)
    return dataset.map(tokenizer, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


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
    """(items/s, CPU ms per item) of one full pass over `dataset` (items: images or pairs)."""
    import tensorflow as tf

    start, cpu, images = time.perf_counter(), time.process_time(), 0
    for batch in dataset:
        images += int(tf.nest.flatten(batch)[0].shape[0])
    return (images / (time.perf_counter() - start),
            1000 * (time.process_time() - cpu) / images)


# (name, builder, the model rate it is compared with: "vit" or "clip")
PIPELINES = (("keras_vtx", keras_vtx_pipeline, "vit"),
             ("keras_vtx, PIL only", pil_only_pipeline, "vit"),
             ("tf.io", tf_io_pipeline, "vit"),
             ("keras_vtx image-text", clip_pairs_pipeline, "clip"),
             ("CLIP tokenizer alone", clip_tokenizer_pipeline, "clip"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--source-size", default="500x375",
                        help="WIDTHxHEIGHT of the JPEGs written (ImageNet-like by default)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--model-rate", type=float, default=H200_VIT_B16_TRAIN,
                        help="the image model's training images/s to compare with")
    parser.add_argument("--clip-rate", type=float, default=H200_CLIP_B32_TRAIN,
                        help="the CLIP model's training pairs/s to compare with")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    try:
        source_size = tuple(int(v) for v in args.source_size.lower().split("x"))
        if len(source_size) != 2 or min(source_size) < 25:
            raise ValueError
    except ValueError:
        parser.error(f"--source-size must be WIDTHxHEIGHT, each >= 25; received "
                     f"{args.source_size!r}")
    if args.quick:
        args.images, args.image_size, args.batch, args.passes = 16, 32, 4, 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    records = []
    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(folder, args.images, source_size)
        datasets = {name: build(paths, args.image_size, args.batch)
                    for name, build, _ in PIPELINES}
        model_rates = {name: args.clip_rate if model == "clip" else args.model_rate
                       for name, _, model in PIPELINES}
        for dataset in datasets.values():
            time_pass(dataset)  # warm-up: tracing, autotuning, file cache
        passes = {name: [] for name in datasets}
        for _ in range(args.passes):  # interleaved, so that a noisy moment hits all alike
            for name, dataset in datasets.items():
                passes[name].append(time_pass(dataset))
        for name, measured in passes.items():
            rate = statistics.median(r for r, _ in measured)
            cpu_ms = statistics.median(c for _, c in measured)
            model_rate = model_rates[name]
            records.append(dict(pipeline=name, images_per_s=rate, cpu_ms_per_image=cpu_ms,
                                cpu_cores=cores, cores_to_feed_model=model_rate * cpu_ms / 1000,
                                model_rate=model_rate, image_size=args.image_size,
                                source_size=list(source_size),
                                batch=args.batch, images=args.images))
    print(f"{args.images} JPEGs ({source_size[0]}x{source_size[1]}) -> {args.image_size} px random resized crop (+ flip "
          f"for classification), batch {args.batch}, {cores} CPU cores; model rates "
          f"{args.model_rate:,.0f} images/s (classification), {args.clip_rate:,.0f} pairs/s "
          "(image-text: CLIP crop and BPE tokenization)")
    header = (f"{'pipeline':<22}{'items/s':>9}{'CPU ms/item':>13}{'model rate':>12}"
              f"{'cores to feed model':>21}")
    print(header)
    print("-" * len(header))
    for r in records:
        print(f"{r['pipeline']:<22}{r['images_per_s']:>9.0f}{r['cpu_ms_per_image']:>13.2f}"
              f"{r['model_rate']:>12,.0f}{r['cores_to_feed_model']:>21.1f}")
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
