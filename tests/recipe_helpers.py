"""What the recipe tests share: loading a recipe script, and a run interrupted then resumed."""

import importlib.util
import os

import keras
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_recipe(name):
    """Imports `recipes/NAME.py` as a module (the recipes are scripts, not a package)."""
    path = os.path.join(REPO, "recipes", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"{name}_recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Interrupted(Exception):
    pass


class InterruptAfterFirstEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise Interrupted(f"stopped after epoch {epoch}")


class EpochRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def run_two_epochs(recipe, argv, output, resume):
    """Runs a 2-epoch recipe: with `resume`, interrupted after epoch 1 then resumed.

    Interrupting and resuming exercises Keras' BackupAndRestore, which does not depend
    on the backend: the tests check it in one session and run the recipe straight
    through in the others. Returns the report.
    """
    if not resume:
        report = recipe.main(argv)
        assert report["epochs_run"] == 2 and report["epochs"] == 2
        return report
    with pytest.raises(Interrupted):
        recipe.main(argv, callbacks=[InterruptAfterFirstEpoch()])
    assert os.listdir(output / "backup"), "no backup written before the interruption"
    assert not (output / "report.json").exists()
    recorder = EpochRecorder()
    report = recipe.main(argv, callbacks=[recorder])
    assert recorder.epochs == [1], "the second run did not resume after the first epoch"
    assert report["epochs_run"] == 1 and report["epochs"] == 2
    return report
