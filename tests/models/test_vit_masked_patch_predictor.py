"""ViT's masked patch prediction (section 4.6): targets, corruption, loss, presets, learning."""

import keras
import numpy as np
import pytest

from keras_vtx.models import ViTBackbone, ViTClassifier, ViTMaskedPatchPredictor
from tests.test_case import to_numpy

TINY = dict(image_size=16, patch_size=4, num_layers=1, hidden_dim=16, num_heads=2, mlp_dim=32)


def _patches(images, p=4):
    b, h, w, c = images.shape
    x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p, c)


def _images(n=4, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, 16, 16, 3)).astype("float32")


@pytest.mark.parametrize("bits", [1, 3, 5])
def test_targets_are_each_patchs_quantised_mean_colour(bits):
    model = ViTMaskedPatchPredictor(ViTBackbone(**TINY), color_bits=bits, seed=0)
    images = _images()
    levels = 2 ** bits
    level = np.clip(np.floor(_patches(images).mean(axis=2) * levels / 256), 0, levels - 1)
    level = level.astype(int)
    expected = (level[..., 0] * levels + level[..., 1]) * levels + level[..., 2]
    np.testing.assert_array_equal(to_numpy(model(images)["targets"]), expected)
    assert model.num_colors == levels ** 3
    white = to_numpy(model.color_targets(np.full((1, 16, 16, 3), 255.0, "float32")))
    assert (white == levels ** 3 - 1).all()


def test_a_given_mask_replaces_exactly_those_patches_by_the_mask_colour():
    model = ViTMaskedPatchPredictor(ViTBackbone(**TINY), mask_value=100.0, seed=0)
    images = _images(2)
    mask = np.zeros((2, 16), bool)
    mask[0, [0, 5]] = mask[1, 15] = True
    corrupted = _patches(to_numpy(model.corrupt(images, mask, np.full((2, 16), -1))))
    np.testing.assert_array_equal(corrupted[mask], 100.0)
    np.testing.assert_array_equal(corrupted[~mask], _patches(images)[~mask])
    np.testing.assert_array_equal(to_numpy(model({"images": images, "mask": mask})["mask"]), mask)


def test_drawn_corruption_follows_the_rates_and_swaps_patches_of_the_same_image():
    model = ViTMaskedPatchPredictor(ViTBackbone(**TINY), mask_rate=0.5,
                                    corruption=(0.8, 0.1, 0.1), seed=1)
    mask, replace, other = (to_numpy(t) for t in model.draw_corruption(4000))
    assert abs(mask.mean() - 0.5) < 0.01 and mask.any(axis=1).all()
    swapped = other >= 0
    assert not (replace & swapped).any() and not (~mask & (replace | swapped)).any()
    corrupted = mask.sum()
    assert abs(replace.sum() / corrupted - 0.8) < 0.01
    assert abs(swapped.sum() / corrupted - 0.1) < 0.01
    # Another patch, never itself.
    assert (other[swapped] != np.nonzero(swapped)[1]).all()
    images = _images(3)
    mask, replace, other = model.draw_corruption(3)
    result = _patches(to_numpy(model.corrupt(images, replace, other)))
    original = _patches(images)
    replace, other = to_numpy(replace), to_numpy(other)
    for b, n in zip(*np.nonzero(other >= 0)):
        np.testing.assert_array_equal(result[b, n], original[b, other[b, n]])
    np.testing.assert_array_equal(result[replace], 127.5)
    kept = (other < 0) & ~replace
    np.testing.assert_array_equal(result[kept], original[kept])


def test_loss_is_the_cross_entropy_of_the_corrupted_patches_only():
    model = ViTMaskedPatchPredictor(ViTBackbone(**TINY), seed=0)
    out = model(_images())
    logits, mask, targets = (to_numpy(out[k]) for k in ("logits", "mask", "targets"))
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    expected = nll[mask].mean()
    np.testing.assert_allclose(to_numpy(model.compute_loss(y_pred=out)), expected, rtol=1e-5)
    # The visible patches do not count: change their logits, the loss stays.
    changed = dict(out, logits=np.where(mask[..., None], logits, 50.0 * logits))
    np.testing.assert_allclose(to_numpy(model.compute_loss(y_pred=changed)), expected, rtol=1e-5)


def test_presets_go_both_ways_with_the_classifier(tmp_path):
    predictor = ViTMaskedPatchPredictor.from_preset("vit_pico_patch4_32", mask_rate=0.75)
    assert (predictor.mask_rate, predictor.backbone.patch_size) == (0.75, (4, 4))
    path = str(tmp_path / "pretrained")
    predictor.save_to_preset(path)
    classifier = ViTClassifier.from_preset(path, num_classes=4)
    assert classifier.include_preprocessing and classifier.num_classes == 4
    for ours, theirs in zip(classifier.backbone.weights, predictor.backbone.weights):
        np.testing.assert_array_equal(to_numpy(ours), to_numpy(theirs))
    back = ViTMaskedPatchPredictor.from_preset(path)
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    mask = np.zeros((2, 64), bool)
    mask[:, ::3] = True
    np.testing.assert_allclose(to_numpy(back({"images": images, "mask": mask})["logits"]),
                               to_numpy(predictor({"images": images, "mask": mask})["logits"]),
                               atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(mask_rate=1.0), "`mask_rate` must be in"),
    (dict(corruption=(0.5, 0.1, 0.1)), "`corruption` must be three"),
    (dict(color_bits=0), "`color_bits` must be an int"),
    (dict(mask_value=300), "`mask_value` must be in"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ViTMaskedPatchPredictor(ViTBackbone(**TINY), **kwargs)


def test_bad_backbones_and_inputs_are_named():
    with pytest.raises(TypeError, match="`backbone` must be a ViTBackbone"):
        ViTMaskedPatchPredictor("vit")
    hybrid = ViTBackbone(image_size=32, patch_size=1, num_layers=1, hidden_dim=16, num_heads=2,
                         mlp_dim=32, hybrid_stem_depths=(1, 1, 1))
    with pytest.raises(ValueError, match="hybrid stem"):
        ViTMaskedPatchPredictor(hybrid)
    model = ViTMaskedPatchPredictor(ViTBackbone(**TINY))
    with pytest.raises(ValueError, match=r"`mask` must be \(batch, 16\)"):
        model({"images": _images(2), "mask": np.zeros((2, 15), bool)})
    with pytest.raises(ValueError, match="'images' and optionally 'mask'"):
        model({"pixels": _images(2)})
    with pytest.raises(ValueError, match="`loss` must be 'auto'"):
        model.compile(loss="mse")


def test_it_learns_to_read_the_visible_patches():
    """Each image is one colour: a hidden patch's colour is that of every visible one.

    With 1-bit colours (8 classes) the prior is at most 1/8 plus chance; reading the
    other patches through attention gives every hidden patch right.
    """
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 2, (256, 1, 1, 3)) * 160.0 + 40.0
    images = np.broadcast_to(levels, (256, 16, 16, 3)).astype("float32")
    model = ViTMaskedPatchPredictor(
        ViTBackbone(**{**TINY, "hidden_dim": 32, "mlp_dim": 64}), mask_rate=0.5,
        corruption=(1.0, 0.0, 0.0), color_bits=1, seed=0)
    model.compile(learning_rate=3e-3, weight_decay=0.0, warmup_steps=5, total_steps=160)
    history = model.fit(images, batch_size=32, epochs=20, verbose=0)
    assert history.history["patch_accuracy"][-1] > 0.9, history.history["patch_accuracy"]
