"""Two JAX processes (CPU, loopback) against one: the same training, the same weights.

Run by tests/test_distribute.py. Without arguments it starts two worker processes
(`keras_vtx.distribute.initialize()` from Keras' KERAS_DISTRIBUTION_* variables, a
coordinator on a free loopback port) and one single-process run, each training a tiny
ViT classifier, a tiny CLIP, an encoder with the SupCon loss and a detector head with
DETR's set loss for two epochs on the same tf.data dataset of the global batch; it prints
one line, "REPORT " + JSON of every process's results. Every process is bounded by a
timeout and killed if it overruns.
"""

import json
import os
import subprocess
import sys

from launch import collect, finish, free_port, jax_environment, stopping, worker_environment

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
TIMEOUT = 300
GLOBAL_BATCH = 8


def set_head_class():
    import keras

    class SetHead(keras.Model):
        """Five queries' class logits and boxes from a feature vector, with a set loss."""

        def __init__(self, set_loss):
            super().__init__()
            self.set_loss = set_loss
            self.classes = keras.layers.Dense(20)
            self.boxes = keras.layers.Dense(20, activation="sigmoid")

        def call(self, x):
            return {"logits": keras.ops.reshape(self.classes(x), (-1, 5, 4)),
                    "boxes": keras.ops.reshape(self.boxes(x), (-1, 5, 4))}

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                         training=True):
            return self.set_loss(y, y_pred)

    return SetHead


def train(kind):
    os.environ["KERAS_BACKEND"] = "jax"
    sys.path.insert(0, ROOT)
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_vtx import distribute
    from keras_vtx.models import CLIP, CLIPTextEncoder, ViTBackbone, ViTClassifier

    started = distribute.initialize()
    distribution = distribute.get_distribution()
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (16, 16, 16, 3)).astype("float32")
    labels = rng.integers(0, 3, 16)
    ids = np.zeros((16, 8), "int32")
    ids[:, 0], ids[:, 1:4], ids[:, 4] = 48, rng.integers(1, 48, (16, 3)), 49
    vit = dict(image_size=16, patch_size=4, num_layers=1, hidden_dim=16, num_heads=2,
               mlp_dim=32)
    results = {"kind": kind, "started": started, "process": distribute.process_index(),
               "processes": distribute.process_count(), "chief": distribute.is_chief(),
               "replicas": distribution.num_replicas, "strategy": repr(distribution)}
    with distribution.scope():
        keras.utils.set_random_seed(0)
        model = ViTClassifier(ViTBackbone(**vit), num_classes=3,
                              head_initializer="glorot_uniform")
        model.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        # Each process feeds its shard of every global batch.
        shards, index = distribute.process_count(), distribute.process_index()
        local = GLOBAL_BATCH // shards
        data = tf.data.Dataset.from_tensor_slices((images, labels)).shard(shards, index)
        history = model.fit(data.batch(local), epochs=2, verbose=0)
        results["vit_loss"] = history.history["loss"]
        results["vit_weights"] = [np.asarray(w).ravel()[:4].tolist() for w in model.get_weights()]
        keras.utils.set_random_seed(0)
        clip = CLIP(ViTBackbone(**vit, pre_norm=True), CLIPTextEncoder(
            vocabulary_size=50, context_length=8, num_layers=1, hidden_dim=16, num_heads=2,
            mlp_dim=32, end_token_id=49), projection_dim=12)
        clip.compile(optimizer=keras.optimizers.SGD(0.1))
        pairs = tf.data.Dataset.from_tensor_slices({"images": images, "token_ids": ids})
        history = clip.fit(pairs.shard(shards, index).batch(local), epochs=2, verbose=0)
        results["clip_loss"] = history.history["loss"]
        results["clip_weights"] = [np.asarray(w).ravel()[:4].tolist()
                                   for w in clip.get_weights()]
        # Losses over the whole global batch: SupCon's positives and negatives, DETR's
        # set loss normalised by the global batch's number of boxes.
        from keras_vtx.losses import HungarianLoss, SupConLoss

        SetHead = set_head_class()

        features = rng.normal(size=(16, 6)).astype("float32")
        keras.utils.set_random_seed(0)
        encoder = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8)])
        encoder.compile(optimizer=keras.optimizers.SGD(0.1), loss=SupConLoss(temperature=0.5))
        supcon = tf.data.Dataset.from_tensor_slices((features, labels))
        history = encoder.fit(supcon.shard(shards, index).batch(local), epochs=2, verbose=0)
        results["supcon_loss"] = history.history["loss"]
        results["supcon_weights"] = [np.asarray(w).ravel()[:4].tolist()
                                     for w in encoder.get_weights()]
        # 1 to 3 boxes per image (label -1 pads), so images weigh differently.
        box_labels = np.where(np.arange(3)[None, :] <= np.arange(16)[:, None] % 3,
                              rng.integers(0, 3, (16, 3)), -1).astype("int32")
        boxes = rng.uniform(0.2, 0.6, (16, 3, 4)).astype("float32")
        keras.utils.set_random_seed(0)
        detector = SetHead(HungarianLoss(num_classes=3))
        detector.compile(optimizer=keras.optimizers.SGD(0.1))
        sets = tf.data.Dataset.from_tensor_slices(
            (features, {"boxes": boxes, "labels": box_labels}))
        history = detector.fit(sets.shard(shards, index).batch(local), epochs=2, verbose=0)
        results["hungarian_loss"] = history.history["loss"]
        results["hungarian_weights"] = [np.asarray(w).ravel()[:4].tolist()
                                        for w in detector.get_weights()]
        if kind == "single":
            # SupCon over half batches sees other positives and negatives.
            keras.utils.set_random_seed(0)
            half_encoder = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8)])
            half_encoder.compile(optimizer=keras.optimizers.SGD(0.1),
                                 loss=SupConLoss(temperature=0.5))
            history = half_encoder.fit(supcon.batch(GLOBAL_BATCH // 2), epochs=2, verbose=0)
            results["supcon_half_batch_loss"] = history.history["loss"]
            # What a process contrasting only its own half of each batch would see: the
            # same CLIP trained on batches of GLOBAL_BATCH / 2 (so the comparison can fail).
            keras.utils.set_random_seed(0)
            half = CLIP(ViTBackbone(**vit, pre_norm=True), CLIPTextEncoder(
                vocabulary_size=50, context_length=8, num_layers=1, hidden_dim=16,
                num_heads=2, mlp_dim=32, end_token_id=49), projection_dim=12)
            half.compile(optimizer=keras.optimizers.SGD(0.1))
            history = half.fit(pairs.batch(GLOBAL_BATCH // 2), epochs=2, verbose=0)
            results["clip_half_batch_loss"] = history.history["loss"]
    # A keras_vtx loader given the global batch: this process's shard, in batches of
    # its part of the global batch, as many steps as every other process.
    from keras_vtx.data import load_classification_data

    data = load_classification_data("shapes:45", image_size=16, batch_size=GLOBAL_BATCH,
                                    validation_split=0.2)
    batches = list(data.train.as_numpy_iterator())
    validation = list(data.validation.as_numpy_iterator())
    results["loader"] = {
        "steps_per_epoch": data.steps_per_epoch,
        "batch_sizes": [len(labels) for _, labels in batches],
        "validation_batch_sizes": [len(labels) for _, labels in validation],
        "validation_labels": np.concatenate([labels for _, labels in validation]).tolist(),
    }
    print("REPORT " + json.dumps(results), flush=True)


def main():
    port = free_port()
    base = jax_environment()
    runs, errors = [], []
    with stopping(runs):
        for process in range(2):
            runs.append(subprocess.Popen([sys.executable, __file__, "worker"],
                                         env=worker_environment(base, port, process),
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True))
        runs.append(subprocess.Popen([sys.executable, __file__, "single"], env=base,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True))
        reports = collect(runs, TIMEOUT, errors)
    finish(reports, errors)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        train(sys.argv[1])
    else:
        main()
