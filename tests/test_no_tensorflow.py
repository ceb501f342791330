"""keras_vtx's layers, ops and models import and run with TensorFlow impossible to import."""

import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(
    """
    import importlib.util
    import sys

    # None in sys.modules makes `import tensorflow` (and its submodules) raise
    # ModuleNotFoundError and `importlib.util.find_spec("tensorflow")` return None:
    # exactly what a machine without TensorFlow shows to keras and torch.
    sys.modules["tensorflow"] = None
    assert importlib.util.find_spec("tensorflow") is None
    try:
        import tensorflow  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("tensorflow could still be imported: the test proves nothing")

    import keras
    import numpy as np

    import keras_vtx
    import keras_vtx.analysis
    import keras_vtx.layers
    import keras_vtx.losses
    import keras_vtx.metrics
    import keras_vtx.models
    import keras_vtx.ops
    from keras_vtx.models import ViTBackbone, ViTClassifier

    assert keras.backend.backend() == "{backend}", keras.backend.backend()
    backbone = ViTBackbone(image_size=16, patch_size=4, num_layers=1, hidden_dim=16,
                           num_heads=2, mlp_dim=32, pooling="map")
    model = ViTClassifier(backbone, num_classes=3, head_initializer="glorot_uniform")
    logits = keras.ops.convert_to_numpy(model(np.zeros((2, 16, 16, 3), "float32")))
    assert logits.shape == (2, 3) and np.all(np.isfinite(logits)), logits

    # DETR, its set loss and the in-graph matcher (the scipy one in the loss: eager JAX
    # recompiles the in-graph solver's loops on every call).
    from keras_vtx.losses import HungarianLoss
    from keras_vtx.models import DETR
    from keras_vtx.ops import linear_sum_assignment

    rows, cols = linear_sum_assignment(np.array([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0]]))
    assert keras.ops.convert_to_numpy(cols).tolist() == [1, 0], cols
    detr = DETR.from_preset("detr_tiny_test")
    outputs = detr(np.zeros((2, 32, 32, 3), "float32"))
    targets = {"boxes": np.array([[[0.5, 0.5, 0.2, 0.2]], [[0.0, 0.0, 0.0, 0.0]]], "float32"),
               "labels": np.array([[1], [-1]], "int32")}
    loss = float(keras.ops.convert_to_numpy(HungarianLoss(matcher="scipy")(targets, outputs)))
    assert np.isfinite(loss) and loss > 0, loss
    loaded = [m for m in sys.modules if m.startswith("tensorflow.")]
    assert sys.modules["tensorflow"] is None and not loaded, loaded
    print("OK")
    """
)


# Each runs once, from the PyTorch session (the subprocess sets its own backend): in
# CI, where the sessions run side by side, PyTorch's ends first.
@pytest.mark.only_backend("torch")
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_models_run_without_tensorflow(backend):
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": REPO}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.replace("{backend}", backend)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), (
        result.stdout[-3000:] + result.stderr[-5000:]
    )
