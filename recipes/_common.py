"""Pieces shared by the training recipes (imported as `recipes._common`)."""

import atexit
import contextlib
import os
import shutil
import tempfile
import time

import keras
import numpy as np


def first_examples(dataset, count):
    """The first `count` `(inputs, labels)` of a batched dataset, as NumPy arrays."""
    inputs, labels, seen = [], [], 0
    for batch_inputs, batch_labels in dataset.as_numpy_iterator():
        inputs.append(batch_inputs)
        labels.append(batch_labels)
        seen += len(batch_inputs)
        if seen >= count:
            break
    return np.concatenate(inputs)[:count], np.concatenate(labels)[:count]


class Throughput(keras.callbacks.Callback):
    """Counts the training batches and the time spent in `fit` in this run."""

    def __init__(self):
        super().__init__()
        self.batches = 0
        self.seconds = 0.0
        self.epochs_run = 0

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1

    def on_epoch_end(self, epoch, logs=None):
        self.epochs_run += 1

    def on_train_end(self, logs=None):
        self.seconds = time.perf_counter() - self._start


def start_processes():
    """Starts the multi-process runtime when Keras' `KERAS_DISTRIBUTION_*` variables ask.

    Call it first (before anything runs on JAX). Returns how many processes train
    together (1 when nothing is set: the run is unchanged). See docs/distribute.md.
    """
    from keras_vtx.distribute import initialize, process_count

    initialize()
    return process_count()


def chosen_distribution(enabled):
    """The `keras_vtx.distribute` choice for this machine, or None when not asked for."""
    if not enabled:
        return None
    from keras_vtx.distribute import get_distribution

    return get_distribution()


def replicas_and_scope(enabled, batch_size):
    """`(num_replicas, scope)` for `--distribute`: `scope()` gives a fresh context manager.

    Raises `ValueError` when the global `batch_size` does not split evenly over the
    replicas.
    """
    distribution = chosen_distribution(enabled)
    num_replicas = distribution.num_replicas if distribution is not None else 1
    if batch_size % num_replicas:
        raise ValueError(
            f"--batch-size {batch_size} must be divisible by the {num_replicas} replicas."
        )

    def scope():  # a fresh context manager each time: generator-based ones enter once
        return distribution.scope() if distribution is not None else contextlib.nullcontext()

    return num_replicas, scope


def measure_and_save(model, preset, measure, scope):
    """Saves the trained `model` as a preset at `preset` and returns `measure(model)`.

    In one process `measure` runs on `model` itself, in `scope()`. With several
    processes the trained weights span them all: process 0 saves the preset and
    measures a copy loaded from it; the others save and measure nothing and get None.
    """
    from keras_vtx.distribute import is_chief, process_count, process_index

    if process_count() == 1:
        with scope():
            result = measure(model)
        model.save_to_preset(preset, overwrite=True)
        return result
    if not is_chief():
        print(f"process {process_index()}: trained; process 0 writes the outputs")
        return None
    model.save_to_preset(preset, overwrite=True)
    return measure(type(model).from_preset(preset))


_PROCESS_OUTPUTS = {}


def process_output(output):
    """The folder this process writes `output`'s files to.

    `output` itself in a single process and on process 0; with several processes the
    others get a temporary folder of their own (the same one for every call with the
    same `output`, removed at exit), so that one set of outputs is written.
    """
    from keras_vtx.distribute import is_chief

    if is_chief():
        return output
    if output not in _PROCESS_OUTPUTS:
        folder = tempfile.mkdtemp(prefix="keras_vtx_worker_")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _PROCESS_OUTPUTS[output] = folder
    return _PROCESS_OUTPUTS[output]


def training_callbacks(output, monitor, mode, extra=None):
    """The recipes' callbacks, writing under `output`; returns `(callbacks, throughput)`.

    Resumption after an interruption (`backup/`), TensorBoard logs (`logs/`), the best
    weights by `monitor` (`checkpoints/best.weights.h5`) and a `Throughput` counter,
    then the caller's `extra` callbacks.

    With several processes every process runs the same callbacks (JAX checks that
    replicated values agree across processes, so a callback one process alone runs can
    stop the run): each backs up to its own `backup/process_N/` (double-buffered, so a
    backup cut short by a dying process leaves the previous one), and only process 0
    writes the logs and checkpoints under `output`; the others write theirs to
    `process_output(output)`.
    """
    from keras_vtx.distribute import process_count, process_index

    backup = os.path.join(output, "backup")
    if process_count() > 1:
        backup = os.path.join(backup, f"process_{process_index()}")
    output = process_output(output)
    os.makedirs(output, exist_ok=True)
    throughput = Throughput()
    callbacks = [
        keras.callbacks.BackupAndRestore(backup, double_checkpoint=process_count() > 1),
        keras.callbacks.TensorBoard(os.path.join(output, "logs"), write_graph=False),
        keras.callbacks.ModelCheckpoint(
            os.path.join(output, "checkpoints", "best.weights.h5"),
            monitor=monitor,
            mode=mode,
            save_best_only=True,
            save_weights_only=True,
        ),
        throughput,
        *(extra or []),
    ]
    return callbacks, throughput


def training_schedule(args, data, dataset, epochs, batch_flag="--batch-size", what="images",
                      hint=""):
    """`(dataset, steps_per_epoch, total_steps, warmup_steps)` of one training phase.

    One pass over `data` per epoch, or `args.steps_per_epoch` batches of an endless
    stream (the dataset repeated); the warm-up is `args.warmup_fraction` of the
    steps. Raises `ValueError` when the training `what` make no full batch, naming
    `batch_flag` and the optional `hint`.
    """
    steps_per_epoch = args.steps_per_epoch or data.steps_per_epoch
    if not steps_per_epoch or steps_per_epoch <= 0:
        raise ValueError(
            f"{data.num_train} training {what} make no full batch of {data.batch_size}; "
            f"lower {batch_flag}{hint}."
        )
    if args.steps_per_epoch:
        dataset = dataset.repeat()  # an endless stream: any number of steps per epoch
    total_steps = epochs * steps_per_epoch
    return dataset, steps_per_epoch, total_steps, int(total_steps * args.warmup_fraction)
