"""keras_vtx.backend: the one module that addresses the backends and Keras' private APIs."""

import pathlib

import keras
import numpy as np
import pytest

from keras_vtx import backend
from tests.test_case import BACKEND, to_numpy

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "keras_vtx"


@pytest.mark.backend_independent
def test_only_the_backend_module_imports_keras_private_modules():
    users = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                   if "keras.src" in p.read_text() and p.name != "backend.py")
    assert users == []


def test_host_values_of_concrete_and_symbolic_tensors():
    x = keras.ops.convert_to_tensor(np.arange(3, dtype="float32"))
    np.testing.assert_array_equal(backend.host_values(x), [0, 1, 2])
    np.testing.assert_array_equal(backend.host_values([1, 2]), [1, 2])
    assert backend.host_values(keras.KerasTensor((2, 3))) is None
    if BACKEND == "jax":
        import jax

        seen = []
        jax.jit(lambda t: seen.append(backend.host_values(t)) or t)(x)
        assert seen == [None]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        seen = []
        tf.function(lambda t: seen.append(backend.host_values(t)) or t)(x)
        assert seen == [None]


def test_default_jit_compile():
    assert backend.default_jit_compile() == (BACKEND in ("tensorflow", "jax"))


def test_stateless_uniform_depends_only_on_seed_and_step():
    like = keras.ops.zeros((2, 3))
    a = to_numpy(backend.stateless_uniform((2, 3), 7, 1, like))
    b = to_numpy(backend.stateless_uniform((2, 3), 7, 1, like))
    c = to_numpy(backend.stateless_uniform((2, 3), 7, 2, like))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert 0.0 < a.min() and a.max() < 1.0


def test_host_callback_eager_and_compiled():
    def fn(x):
        return (np.asarray(x, "float32") * 2, np.asarray(x.shape[:1], "int32"))

    x = keras.ops.convert_to_tensor(np.ones((2, 3), "float32"))
    outputs = (((2, 3), np.float32), ((1,), np.int32))
    doubled, size = backend.host_callback(fn, outputs, x)
    np.testing.assert_array_equal(to_numpy(doubled), 2 * np.ones((2, 3)))
    assert to_numpy(size).tolist() == [2]
    if BACKEND == "jax":
        import jax

        doubled, _ = jax.jit(lambda t: backend.host_callback(fn, outputs, t))(x)
        np.testing.assert_array_equal(to_numpy(doubled), 2 * np.ones((2, 3)))
    if BACKEND == "tensorflow":
        import tensorflow as tf

        doubled, _ = tf.function(lambda t: backend.host_callback(fn, outputs, t),
                                 jit_compile=False)(x)
        np.testing.assert_array_equal(to_numpy(doubled), 2 * np.ones((2, 3)))


def test_a_single_process_is_its_own_replica():
    value = keras.ops.convert_to_tensor(3.0)
    total, replicas, share = backend.sum_over_replicas(value)
    assert (float(to_numpy(total)), replicas, share) == (3.0, 1.0, 1.0)
    assert backend.gather_over_replicas(value) is None
    assert backend.replicas_in_step() == 1 and backend.tensorflow_strategy_replicas() == 1
    assert backend.data_parallel_layout((4, 2)) is None


def test_torch_multi_tensor_adam_step_is_found_on_torch():
    step = backend.torch_multi_tensor_adam_step()
    assert (step is not None) == (BACKEND == "torch")


class LazyModel(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)  # built by the first call

    def call(self, x):
        return self.dense(x)


def test_optimizer_is_left_to_keras_while_a_layer_is_unbuilt():
    model = LazyModel()
    model.compile(optimizer="adam", loss="mse")
    backend.build_optimizer_before_tracing(model)  # its variables do not exist yet: nothing
    assert not model.optimizer.built
    model(np.zeros((1, 3), "float32"))
    backend.build_optimizer_before_tracing(model)  # only TensorFlow builds it in the step
    assert model.optimizer.built == (BACKEND == "tensorflow")
    if BACKEND == "tensorflow":
        assert len(model.optimizer.variables) > 2  # the slots of both weights
    model.fit(np.zeros((2, 3), "float32"), np.zeros((2, 2), "float32"), verbose=0)
