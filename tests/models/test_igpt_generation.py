"""Sampling from Image GPT: the key/value cache, sampling options, bad input."""

import numpy as np
import pytest

from keras_vtx.models.igpt.image_gpt import ImageGPT
from keras_vtx.models.igpt.image_gpt_backbone import ImageGPTBackbone
from keras_vtx.models.igpt.image_gpt_generation import cached_logits, generate_pixel_ids
from tests.test_case import assert_allclose, randomize_weights, to_numpy

PALETTE = 16


def _model(sequence_length=36):
    # 6x6 images, 16 colours: every loop below runs 36 steps at most.
    backbone = ImageGPTBackbone(vocabulary_size=PALETTE + 1, sequence_length=sequence_length,
                                hidden_dim=16, num_layers=2, num_heads=2)
    model = ImageGPT(backbone)
    # Larger-than-init weights: sharp, varied distributions, so sampling options
    # visibly matter and near-ties (which float rounding could flip) are rare.
    randomize_weights(model, scale=0.5)
    return model


@pytest.fixture(scope="module")
def model():
    return _model()


def _ids(batch, length, seed=0):
    return np.random.default_rng(seed).integers(0, PALETTE, (batch, length)).astype("int32")


# The tests share a few shapes (batch 3, prefix 0 or 7): one compilation each.


def test_cached_logits_equal_full_forward_at_every_position(model):
    ids = _ids(2, 12)
    full = to_numpy(model(ids))
    for prefill in (1, 5):
        assert_allclose(cached_logits(model, ids, prefill_length=prefill), full, atol=1e-4)


@pytest.mark.parametrize("prefix_length", [0, 7])
def test_cached_equals_uncached_greedy_and_sampled(model, prefix_length):
    prefix = _ids(3, prefix_length, seed=1) if prefix_length else None
    for options in (dict(greedy=True), dict(seed=5), dict(seed=5, top_k=4, top_p=0.9)):
        cached = generate_pixel_ids(model, prefix, num_images=3, use_cache=True, **options)
        uncached = generate_pixel_ids(model, prefix, num_images=3, use_cache=False, **options)
        assert cached.shape == (3, 36) and cached.dtype == np.int32
        np.testing.assert_array_equal(cached, uncached, err_msg=str(options))
        assert cached.min() >= 0 and cached.max() < PALETTE
        if prefix is not None:
            np.testing.assert_array_equal(cached[:, :prefix_length], prefix)


def test_greedy_is_the_argmax_of_the_model(model):
    ids = generate_pixel_ids(model, num_images=3, greedy=True)
    # Teacher-forcing the greedy image gives back its own argmax at every position.
    np.testing.assert_array_equal(to_numpy(model(ids)).argmax(-1), ids)


def test_top_k_one_and_tiny_top_p_are_greedy(model):
    prefix = _ids(3, 7, seed=2)
    greedy = generate_pixel_ids(model, prefix, greedy=True)
    np.testing.assert_array_equal(generate_pixel_ids(model, prefix, top_k=1, seed=3), greedy)
    np.testing.assert_array_equal(generate_pixel_ids(model, prefix, top_p=1e-6, seed=4), greedy)
    # A very low temperature concentrates everything on the argmax too.
    np.testing.assert_array_equal(
        generate_pixel_ids(model, prefix, temperature=1e-4, seed=5), greedy)


def test_seed_temperature_and_filters_change_samples(model):
    first = generate_pixel_ids(model, num_images=3, seed=11)
    np.testing.assert_array_equal(generate_pixel_ids(model, num_images=3, seed=11), first)
    assert (generate_pixel_ids(model, num_images=3, seed=12) != first).any()
    hot = generate_pixel_ids(model, num_images=3, seed=11, temperature=5.0)
    assert (hot != first).any()
    greedy = generate_pixel_ids(model, num_images=3, greedy=True)
    # Higher temperature: further from the argmax image.
    cold = generate_pixel_ids(model, num_images=3, seed=11, temperature=0.3)
    assert (cold != greedy).mean() < (hot != greedy).mean()
    # top_k=2: every pixel is one of the two likeliest colours given its past.
    two = generate_pixel_ids(model, num_images=3, seed=11, top_k=2)
    ranks = np.argsort(-to_numpy(model(two)), axis=-1)[..., :2]
    assert (ranks == two[..., None]).any(-1).all()
    # Options and seeds are arguments of one compiled loop per (batch, prefix, cache).
    assert (3, 0, True) in model._pixel_sampling_functions
    assert all(key[0] == 3 for key in model._pixel_sampling_functions)


def test_shared_prefix_and_full_length_prefix(model):
    prefix = _ids(1, 7)[0]
    out = generate_pixel_ids(model, prefix, num_images=3, seed=0)
    assert out.shape == (3, 36)
    np.testing.assert_array_equal(out[:, :7], np.tile(prefix, (3, 1)))
    full = _ids(2, 36)
    np.testing.assert_array_equal(generate_pixel_ids(model, full), full)


def test_generate_wrapper_returns_images():
    model = ImageGPT.from_preset("igpt_tiny_test")
    images = model.generate(num_images=2, seed=0, top_k=3)
    assert images.shape == (2, 8, 8, 3) and images.dtype == np.uint8
    ids = model.generate(num_images=2, seed=0, top_k=3, return_ids=True)
    np.testing.assert_array_equal(model.palette.dequantize(ids, image_size=8), images)


def test_bad_input_raises(model):
    with pytest.raises(ValueError, match="sequence_length"):
        generate_pixel_ids(model, _ids(1, 37))
    with pytest.raises(ValueError, match="palette ids"):
        generate_pixel_ids(model, np.full((1, 3), PALETTE, "int32"))
    with pytest.raises(ValueError, match="palette ids"):
        generate_pixel_ids(model, np.full((1, 3), -1, "int32"))
    with pytest.raises(ValueError, match="integer"):
        generate_pixel_ids(model, np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match="num_images"):
        generate_pixel_ids(model, _ids(2, 3), num_images=3)
    with pytest.raises(ValueError, match="num_images"):
        generate_pixel_ids(model, num_images=0)
    for temperature in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            generate_pixel_ids(model, temperature=temperature)
    for top_k in (0, -2, 1.5):
        with pytest.raises(ValueError, match="top_k"):
            generate_pixel_ids(model, top_k=top_k)
    for top_p in (0, 1.5, -0.1):
        with pytest.raises(ValueError, match="top_p"):
            generate_pixel_ids(model, top_p=top_p)
    with pytest.raises(ValueError, match="seed"):
        generate_pixel_ids(model, seed=1.5)
    with pytest.raises(ValueError, match="prefill_length"):
        cached_logits(model, _ids(1, 4), prefill_length=0)
    bert = ImageGPT.from_preset("igpt_tiny_test", objective="bert")
    with pytest.raises(ValueError, match="autoregressive"):
        generate_pixel_ids(bert, num_images=1)
