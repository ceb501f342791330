"""keras_vtx.metrics, keras_vtx.analysis and the zero-shot classifier work with TensorFlow hidden."""

import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent(
    """
    import sys

    sys.modules["tensorflow"] = None  # `import tensorflow` now raises ModuleNotFoundError

    import keras
    import numpy as np

    from keras_vtx.analysis import LinearProbe, extract_features, probe_layers
    from keras_vtx.metrics import RetrievalRecall, retrieval_recall
    from keras_vtx.models.clip.zero_shot_classifier import ZeroShotClassifier

    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3))
    y = (x[:, 0] > 0).astype(int)
    features, labels = extract_features(lambda b: b * 2, x, y, batch_size=16)
    assert LinearProbe().fit(features, labels).score(features, labels) > 0.9
    assert set(probe_layers([x, x], y)) == {0, 1}
    assert retrieval_recall(x, x, ks=(1,))["image_to_text_recall@1"] == 1.0
    metric = RetrievalRecall(1)
    metric.update_state(None, np.eye(3))
    assert float(metric.result()) == 1.0

    class ToyCLIP(keras.Model):
        def __init__(self):
            super().__init__()
            self.logit_scale = self.add_weight(shape=(), initializer="zeros")

        def encode_images(self, images):
            return keras.ops.normalize(images, axis=-1)

    model = ZeroShotClassifier(ToyCLIP(), "cifar10", class_embeddings=np.eye(10))
    labels, _ = model.predict_top_k(np.eye(10, dtype="float32")[[3]], k=1)
    assert labels.tolist() == [["cat"]], labels
    loaded = [m for m in sys.modules if m.startswith("tensorflow.")]
    assert sys.modules["tensorflow"] is None and not loaded, loaded
    print("OK")
    """
)


# Each runs once, from the PyTorch session (the subprocess sets its own backend): in
# CI, where the sessions run side by side, PyTorch's ends first.
@pytest.mark.only_backend("torch")
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_metrics_analysis_and_zero_shot_without_tensorflow(backend):
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": REPO}
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), (
        result.stdout[-3000:] + result.stderr[-5000:]
    )
