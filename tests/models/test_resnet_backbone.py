import math

import keras
import numpy as np
import pytest

from keras_vtx.layers.frozen_batch_normalization import FrozenBatchNormalization
from keras_vtx.models.detr.resnet_backbone import ResNetBackbone
from tests.test_case import (
    assert_all_weights_get_gradients,
    assert_allclose,
    random_images,
    randomize_weights,
    shapes_only,
    to_numpy,
)

# Stem 8 channels = stage 1's 2 x 4 outputs: stage 1 has an identity shortcut.
TINY = dict(stage_filters=(2, 4, 4, 8), blocks_per_stage=(1, 1, 1, 2), stem_filters=8)
# Few distinct shapes: JAX compiles every eager op once per shape.
EVEN, ODD = (64, 32), (65, 97)


def _tiny(**overrides):
    return ResNetBackbone(**{**TINY, **overrides})


def _convs(model):
    return {layer.name: layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)}


def _randomize(model, seed):
    randomize_weights(model, seed=seed, scale=0.3)
    for v in model.non_trainable_variables:
        if v.path.endswith("moving_variance"):
            v.assign(np.abs(to_numpy(v)) + 0.5)


def _stage(path):
    name = path.split("/")[0]
    return 0 if name.startswith("stem_") else int(name[len("stage")])


@pytest.mark.parametrize("dilation", [False, True])
def test_output_shapes_odd_and_even_sizes(dilation):
    # One model, images of several sizes (odd, even, non-square): H and W are dynamic.
    model = _tiny(dilation=dilation)
    stride = 16 if dilation else 32
    assert model.output_stride == stride and model.output_channels == 32
    for size in [EVEN, ODD]:
        out = model(random_images(1, size))
        expected = (1, math.ceil(size[0] / stride), math.ceil(size[1] / stride), 32)
        assert tuple(out.shape) == expected, size


def test_layout():
    model = _tiny()
    convs = _convs(model)
    norms = [layer for layer in model.layers if isinstance(layer, FrozenBatchNormalization)]
    # stem + 5 blocks x 3 convs + projections in stages 2-4, a frozen norm after each conv.
    assert len(convs) == len(norms) == 1 + 5 * 3 + 3
    assert not any(conv.use_bias for conv in convs.values())
    strides = {name for name, conv in convs.items() if conv.strides != (1, 1)}
    # v1.5: stride 2 on the 3x3 of the first block of stages 2-4, not on its 1x1. The
    # projection shortcut has stride 2 too, as a stride-1 1x1 convolution of every other
    # position (no strided 1x1 convolution: TensorFlow's oneDNN crash, ops/subsample.py).
    assert strides == {"stem_conv"} | {f"stage{s}_block0_conv2" for s in (2, 3, 4)}
    sized = _convs(_tiny(image_shape=(64, 96, 3)))
    for s in (2, 3, 4):
        shortcut, conv2 = sized[f"stage{s}_block0_shortcut_conv"], sized[f"stage{s}_block0_conv2"]
        assert shortcut.kernel_size == (1, 1)
        assert shortcut.output.shape == conv2.output.shape[:3] + (shortcut.filters,)
        assert shortcut.input.shape[1:3] == conv2.output.shape[1:3]
    assert all(conv.dilation_rate == (1, 1) for conv in convs.values())
    # Identity shortcuts where neither stride nor channels change.
    assert "stage1_block0_shortcut_conv" not in convs
    assert "stage4_block1_shortcut_conv" not in convs
    projected = _convs(_tiny(stem_filters=4))
    assert projected["stage1_block0_shortcut_conv"].strides == (1, 1)


def test_dilation_layout():
    convs = _convs(_tiny(dilation=True))
    # torchvision's replace_stride_with_dilation: the first block of the last stage keeps
    # the previous dilation (1) and drops the stride, the next blocks use dilation 2.
    assert convs["stage4_block0_conv2"].strides == (1, 1)
    assert convs["stage4_block0_conv2"].dilation_rate == (1, 1)
    assert convs["stage4_block0_shortcut_conv"].strides == (1, 1)
    assert convs["stage4_block1_conv2"].dilation_rate == (2, 2)
    assert convs["stage3_block0_conv2"].strides == (2, 2)
    assert convs["stage3_block0_conv2"].dilation_rate == (1, 1)


@pytest.mark.parametrize("frozen_stages", [None, -1, 0, 1, 2, 4])
def test_frozen_stages_trainable_weights(frozen_stages):
    model = _tiny(frozen_stages=frozen_stages)
    last_frozen = -1 if frozen_stages is None else frozen_stages
    expected = {f"{name}/kernel" for name in _convs(model) if _stage(name) > last_frozen}
    assert {v.path for v in model.trainable_variables} == expected
    assert all(v.path.endswith("/kernel") for v in model.trainable_variables)
    frozen_norm_weights = [v for v in model.non_trainable_variables if "norm" in v.path]
    assert len(frozen_norm_weights) == 4 * len(_convs(model))


def test_trainable_setter_keeps_frozen_stages():
    model = _tiny()
    expected = {v.path for v in model.trainable_variables}
    assert expected and all(_stage(p) >= 2 for p in expected)
    model.trainable = False
    assert model.trainable_variables == []
    model.trainable = True
    assert {v.path for v in model.trainable_variables} == expected
    # Unfreezing a model that contains the backbone keeps its frozen stages too.
    inputs = keras.Input((None, None, 3))
    wrapper = keras.Model(inputs, model(inputs))
    wrapper.trainable = False
    wrapper.trainable = True
    assert {v.path for v in wrapper.trainable_variables} == expected


def test_gradients_reach_unfrozen_stages_only():
    model = _tiny(frozen_stages=1)
    _randomize(model, seed=1)
    x = random_images(1, EVEN)
    assert_all_weights_get_gradients(model, x)
    # One optimizer step through `fit`'s train step: frozen weights stay as they were.
    before = {v.path: to_numpy(v) for v in model.weights}
    jit = keras.backend.backend() == "jax"  # eager JAX steps are the slowest option
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=jit)
    model.train_on_batch(x, np.ones((1, 2, 1, 32), "float32"))
    changed = {v.path for v in model.weights if not np.array_equal(before[v.path], to_numpy(v))}
    assert changed == {v.path for v in model.trainable_variables}
    assert all(_stage(p) >= 2 for p in changed)


def test_fixed_image_shape():
    fixed = _tiny(image_shape=EVEN + (3,))
    assert tuple(fixed(random_images(1, EVEN)).shape) == (1, 2, 1, 32)
    with pytest.raises(ValueError, match="64x32"):
        fixed(random_images(1, 32))


def test_mixed_precision():
    reference = _tiny()
    _randomize(reference, seed=2)
    x = random_images(1, EVEN)
    keras.config.set_dtype_policy("mixed_float16")
    model = _tiny()
    model.set_weights(reference.get_weights())
    out = model(x)
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    assert all(v.dtype == "float32" for v in model.weights)
    expected = to_numpy(reference(x))
    assert_allclose(to_numpy(out).astype("float32"), expected, atol=0.05 * np.abs(expected).max(),
                    rtol=0.05)


def test_bad_arguments():
    with pytest.raises(ValueError, match="`depth`"):
        ResNetBackbone(depth=34)
    with pytest.raises(ValueError, match="`frozen_stages`"):
        _tiny(frozen_stages=5)
    with pytest.raises(ValueError, match="same length"):
        _tiny(blocks_per_stage=(1, 1, 1))
    with pytest.raises(ValueError, match="`stage_filters`"):
        _tiny(stage_filters=(2, 0, 4, 8))
    with pytest.raises(ValueError, match="`image_shape`"):
        _tiny(image_shape=(None, None, None))
    model = _tiny()
    with pytest.raises(ValueError, match="rank 4"):
        model(np.zeros((32, 32, 3), "float32"))
    with pytest.raises(ValueError, match="3 channels"):
        model(np.zeros((1, 32, 32, 4), "float32"))
    with pytest.raises(TypeError, match="images"):
        model({"images": np.zeros((1, 32, 32, 3), "float32")})


def test_config_round_trip_and_saving(tmp_path):
    model = _tiny(dilation=True, frozen_stages=2, epsilon=1e-3, name="resnet")
    _randomize(model, seed=3)
    config = model.get_config()
    clone = ResNetBackbone.from_config(config)
    assert clone.get_config() == config
    assert [(v.path, v.trainable) for v in clone.weights] == [
        (v.path, v.trainable) for v in model.weights]
    x = random_images(1, ODD)
    path = str(tmp_path / "resnet.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, ResNetBackbone) and loaded.get_config() == config
    expected = to_numpy(model(x))
    assert_allclose(loaded(x), expected, atol=0)
    assert {v.path for v in loaded.trainable_variables} == {
        v.path for v in model.trainable_variables}
    model.save_to_preset(tmp_path / "preset")
    preset = ResNetBackbone.from_preset(tmp_path / "preset")
    assert_allclose(preset(x), expected, atol=0)


@pytest.mark.backend_independent
@pytest.mark.parametrize(
    "depth, parameters, statistics",
    # transformers `ResNetModel(ResNetConfig(depths=...))`: `parameters()` (convolutions +
    # batch-norm weight and bias) and the running mean/var buffers, counted locally.
    [(50, 23_508_032, 53_120),
     pytest.param(101, 42_500_160, 105_344, marks=pytest.mark.slow)],
)
def test_parameter_counts(depth, parameters, statistics):
    with shapes_only():
        model = ResNetBackbone(depth=depth)
    moving = sum(math.prod(v.shape) for v in model.weights if "/moving_" in v.path)
    assert model.count_params() - moving == parameters
    assert moving == statistics
    assert model.output_channels == 2048 and model.output_stride == 32


def test_trainable_batch_norm_option_for_training_from_scratch():
    frozen = _tiny(frozen_stages=-1)
    _randomize(frozen, seed=3)
    model = _tiny(frozen_stages=-1, norm="batch_norm")
    norms = [layer for layer in model.layers if "norm" in layer.name]
    assert norms and all(type(n) is keras.layers.BatchNormalization for n in norms)
    assert model.get_config()["norm"] == "batch_norm"
    # Same weights (the names match): same inference output as frozen batch norm.
    for a, b in zip(model.weights, frozen.weights):
        assert a.path == b.path
        a.assign(b.value)
    images = random_images(2, 32)
    assert_allclose(model(images, training=False), frozen(images, training=False), atol=1e-5)
    # Training mode normalises with batch statistics and moves the moving averages.
    before = to_numpy(norms[0].moving_mean)
    model(images, training=True)
    assert not np.allclose(to_numpy(norms[0].moving_mean), before)
    assert any(v.path.endswith("gamma") for v in model.trainable_variables)
    with pytest.raises(ValueError, match="`norm`"):
        _tiny(norm="group_norm")
