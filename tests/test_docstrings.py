"""Runs every docstring example (`>>>`) in keras_vtx: the docs must not lie."""

import doctest
import importlib
import pathlib

import keras
import numpy as np
import pytest

import keras_vtx

PACKAGE_DIR = pathlib.Path(keras_vtx.__file__).parent


def _module_names():
    # Found on disk, not by importing, so every module (data/ and distribute included,
    # once written) is collected and a module that fails to import fails its test.
    names = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


MODULES = _module_names()
# JAX's session is CI's longest (each eager op compiles with XLA): its examples run on the
# other two backends.
ROTATION = ("tensorflow", "torch")


def _marks(index, name):
    # tf.data pipelines do not depend on the Keras backend: their examples run once. The
    # other modules' examples run on one backend each, in turn (the unit tests cover every
    # function on all three backends): running each on all three cost ~470 s of CI's
    # ~4,900 core-seconds.
    if name.startswith("keras_vtx.data"):
        return [pytest.mark.backend_independent]
    return [pytest.mark.only_backend(ROTATION[index % len(ROTATION)])]


PARAMS = [pytest.param(name, marks=_marks(i, name)) for i, name in enumerate(MODULES)]


@pytest.mark.parametrize("module_name", PARAMS)
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    globs = {**vars(module), "keras": keras, "np": np}
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(module, module_name, globs=globs) if t.examples]
    # Objects re-exported from another module are tested where they are defined.
    tests = [t for t in tests if _defined_in(t, module)]
    report = []
    for test in tests:
        runner.run(test, out=report.append)
    assert runner.failures == 0, "\n".join(report)


def _defined_in(test, module):
    obj_name = test.name.rsplit(".", 1)[-1]
    obj = getattr(module, obj_name, None)
    owner = getattr(obj, "__module__", module.__name__)
    return owner == module.__name__ or test.name == module.__name__


def test_public_layers_and_models_have_running_examples():
    from keras_vtx import analysis, layers, losses, metrics, models, ops

    missing = []
    for package in (analysis, layers, losses, metrics, models, ops):
        for name in package.__all__:
            obj = getattr(package, name)
            # Base classes are documented through their subclasses' examples.
            if not callable(obj) or name in ("Backbone", "Task"):
                continue
            doc = getattr(obj, "__doc__", "") or ""
            if ">>>" not in doc:
                missing.append(f"{package.__name__}.{name}")
    assert not missing, f"Public objects without an `Example:` that runs: {missing}"


def test_modules_found():
    for name in ("keras_vtx.layers.multi_head_attention", "keras_vtx.models.vit.vit_backbone",
                 "keras_vtx.ops.interpolate"):
        assert name in MODULES
