"""Task models are fully built when constructed, and `fit()` traces the training step once."""

import keras
import numpy as np
import pytest

from keras_vtx.models import (
    CLIP,
    DETR,
    ImageGPT,
    ImageGPTClassifier,
    ViTBackbone,
    ViTClassifier,
)
from keras_vtx.models.task import build_optimizer_before_tracing
from tests.test_case import BACKEND

MODELS = {
    "vit": lambda: ViTClassifier.from_preset("vit_pico_patch4_32", num_classes=3),
    "clip": lambda: CLIP.from_preset("clip_pico_patch4_32"),
    "igpt": lambda: ImageGPT.from_preset("igpt_tiny_test"),
    "igpt_classifier": lambda: ImageGPTClassifier.from_preset("igpt_tiny_test", num_classes=3),
    "detr": lambda: DETR.from_preset("detr_tiny_test"),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_layer_is_built_at_construction(name):
    # An unbuilt layer (a weightless one that is never called, such as a rate-0
    # DropPath) makes Keras rebuild the model symbolically before every fit, evaluate
    # and predict, and on TensorFlow build the optimizer inside the first trace of the
    # training step, which TensorFlow then traces a second time.
    model = MODELS[name]()
    assert [layer.path for layer in model._flatten_layers() if not layer.built] == []


def test_fit_traces_the_training_step_once():
    backbone = ViTBackbone(image_size=32, patch_size=8, num_layers=1, hidden_dim=16,
                           num_heads=2, mlp_dim=32)
    model = ViTClassifier(backbone, num_classes=3)
    model.compile(total_steps=10, warmup_steps=1)
    calls = []
    train_step = model.train_step

    def counting_train_step(*args):  # (data), or (state, data) on JAX
        calls.append(1)
        return train_step(*args)

    model.train_step = counting_train_step
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    model.fit(x, np.array([0, 1, 2, 0]), batch_size=2, epochs=1, verbose=0)
    # Traced once by TensorFlow and JAX (twice on TensorFlow when the optimizer was
    # built inside the trace); PyTorch runs it eagerly, once per step.
    assert len(calls) == (2 if BACKEND == "torch" else 1)
    assert model.optimizer.built


class LazyModel(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)  # built by the first call

    def call(self, x):
        return self.dense(x)


def test_optimizer_is_left_to_keras_while_a_layer_is_unbuilt():
    model = LazyModel()
    model.compile(optimizer="adam", loss="mse")
    build_optimizer_before_tracing(model)  # its variables do not exist yet: nothing
    assert not model.optimizer.built
    model(np.zeros((1, 3), "float32"))
    build_optimizer_before_tracing(model)  # only TensorFlow builds it in the step
    assert model.optimizer.built == (BACKEND == "tensorflow")
    if BACKEND == "tensorflow":
        assert len(model.optimizer.variables) > 2  # the slots of both weights
    model.fit(np.zeros((2, 3), "float32"), np.zeros((2, 2), "float32"), verbose=0)
