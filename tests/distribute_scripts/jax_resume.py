"""A killed JAX process, restarted with the same command, resumes the run exactly.

Run by tests/test_distribute.py. Without arguments it trains a tiny ViT classifier for
three epochs in three ways and prints "REPORT " + JSON of the results:

- `single`: one process on the whole global batch, uninterrupted (the reference);
- `workers`, first launch: two processes on the loopback (each with its shard of every
  global batch) and `BackupAndRestore` in a directory per process; process 1 dies
  (`os._exit`) in the middle of the second epoch, after the first was backed up. Process 0
  then waits in a collective that never completes: the launcher stops it, as a job
  scheduler stops the rest of a job whose process died;
- `workers`, second launch: the same command again. Both processes restore the first
  epoch's backup and run the other two epochs.

Every process is bounded by a timeout and killed if it overruns.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from launch import collect, finish, free_port, jax_environment, stopping, worker_environment

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
TIMEOUT = 300
GLOBAL_BATCH = 8
EPOCHS = 3


def train(kind, backup_root):
    os.environ["KERAS_BACKEND"] = "jax"
    sys.path.insert(0, ROOT)
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_vtx import distribute
    from keras_vtx.models import ViTBackbone, ViTClassifier

    distribute.initialize()
    distribution = distribute.get_distribution()
    shards, index = distribute.process_count(), distribute.process_index()
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (24, 16, 16, 3)).astype("float32")
    labels = rng.integers(0, 3, 24)
    epochs_run = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
            epochs_run.append(epoch)

        def on_train_batch_begin(self, batch, logs=None):
            # Killed in the middle of an epoch: no cleanup, no backup of this epoch.
            if os.environ.get("DIE_AT_EPOCH") == str(self.epoch) and batch == 1:
                os._exit(17)

    with distribution.scope():
        keras.utils.set_random_seed(0)
        model = ViTClassifier(ViTBackbone(image_size=16, patch_size=4, num_layers=1,
                                          hidden_dim=16, num_heads=2, mlp_dim=32),
                              num_classes=3, head_initializer="glorot_uniform")
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.build((None, 16, 16, 3))
        data = tf.data.Dataset.from_tensor_slices((images, labels)).shard(shards, index)
        # Every process runs the same callbacks (a variable written by one process only
        # fails JAX's check that replicated values agree); each backs up to its own folder.
        backup = keras.callbacks.BackupAndRestore(
            os.path.join(backup_root, f"process_{index}"), double_checkpoint=True)
        history = model.fit(data.batch(GLOBAL_BATCH // shards), epochs=EPOCHS, verbose=0,
                            callbacks=[backup, Record()])
    report = {"kind": kind, "process": index, "epochs_run": epochs_run,
              "loss": history.history["loss"],
              "weights": [np.asarray(w).ravel()[:4].tolist() for w in model.get_weights()]}
    print("REPORT " + json.dumps(report), flush=True)


def launch(kind, env, backup_root):
    return subprocess.Popen([sys.executable, __file__, kind, backup_root], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def main():
    base = jax_environment(drop=("DIE_AT_EPOCH",))
    root = tempfile.mkdtemp(prefix="vtx_resume_")
    runs, errors, result = [], [], {}

    def workers(die_at=None):
        port = free_port()
        for process in range(2):
            env = worker_environment(base, port, process)
            if die_at is not None and process == 1:
                env["DIE_AT_EPOCH"] = str(die_at)
            runs.append(launch("worker", env, os.path.join(root, "workers")))
        return runs[-2:]

    with stopping(runs):
        runs.append(launch("single", base, os.path.join(root, "single")))
        result["single"] = collect(runs[-1:], TIMEOUT, errors)

        first = workers(die_at=1)
        deadline = time.monotonic() + TIMEOUT
        while first[1].poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        result["killed_exit_code"] = first[1].returncode
        time.sleep(2)
        result["survivor_still_running"] = first[0].poll() is None
        first[0].kill()  # the scheduler stops the rest of the job
        for run in first:
            run.communicate()
        result["backups"] = sorted(os.listdir(os.path.join(root, "workers")))

        result["resumed"] = collect(workers(), TIMEOUT, errors)
    shutil.rmtree(root, ignore_errors=True)
    finish(result, errors)


if __name__ == "__main__":
    if len(sys.argv) > 2:
        train(sys.argv[1], sys.argv[2])
    else:
        main()
