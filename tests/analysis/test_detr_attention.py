import keras
import numpy as np
import pytest
from PIL import Image

from keras_vtx.analysis.detr_attention import (
    detr_attention_maps,
    detr_encoder_attention,
    plot_detr_decoder_attention,
    plot_detr_encoder_attention,
)
from keras_vtx.models.detr.detr import DETR
from keras_vtx.models.detr.detr_post_processing import post_process_detections
from tests.test_case import to_numpy

# Two 64 x 48 images (the size tests/models/test_detr.py uses: compiled kernels are shared),
# the second padded below row 40 and right of column 20: with stride 32 the feature map is
# 2 x 2 and the second image's right feature column is padding.
HEIGHT, WIDTH, STRIDE = 64, 48, 32


@pytest.fixture(scope="module")
def model():
    # Module fixtures are built before the per-test seed reset: seed here for repeatable weights.
    keras.utils.set_random_seed(0)
    return DETR.from_preset("detr_tiny_test", return_attention_scores=True)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, HEIGHT, WIDTH, 3)).astype("float32")
    mask = np.ones((2, HEIGHT, WIDTH), "int32")
    mask[1, 40:] = 0
    mask[1, :, 20:] = 0
    images[1][mask[1] == 0] = 0.0
    return images, mask


@pytest.fixture(scope="module")
def raw(model, inputs):
    images, mask = inputs
    return to_numpy(model({"images": images, "pixel_mask": mask}, training=False))


def test_needs_a_detr_built_with_attention(model):
    images = np.zeros((1, 32, 32, 3), "float32")
    with pytest.raises(TypeError, match="DETR"):
        detr_attention_maps(object(), images)
    plain = DETR.from_preset("detr_tiny_test")
    for call in (lambda: detr_attention_maps(plain, images),
                 lambda: detr_encoder_attention(plain, images, [[0, 0]])):
        with pytest.raises(ValueError, match=r"return_attention_scores=True"):
            call()
    for bad in dict(layer=2), dict(layer=-3), dict(top_k=0), dict(top_k=6):
        with pytest.raises(ValueError, match="layer|top_k"):
            detr_attention_maps(model, images, **bad)


def test_decoder_maps_are_the_cross_attention_of_the_kept_queries(model, inputs, raw):
    images, mask = inputs
    results = detr_attention_maps(model, images, pixel_mask=mask, top_k=2)
    detections = post_process_detections(raw, [[64, 48], [40, 20]], threshold=-1.0, top_k=2)
    cross = raw["decoder_attention_scores"][-1].mean(axis=1)  # (batch, queries, h * w)
    np.testing.assert_array_equal(results[1]["feature_mask"],
                                  [[True, False], [True, False]])
    for i, (result, expected) in enumerate(zip(results, detections)):
        assert len(result["queries"]) == 2 and result["decoder_maps"].shape == (2, 2, 2)
        assert result["decoder_maps"].dtype == np.float32
        np.testing.assert_allclose(result["decoder_maps"],
                                   cross[i, result["queries"]].reshape(2, 2, 2), atol=1e-6)
        for key in ("scores", "labels", "boxes"):
            np.testing.assert_allclose(result[key], expected[key], rtol=1e-5, atol=1e-4)
        valid = result["feature_mask"]
        np.testing.assert_allclose(result["decoder_maps"][:, valid].sum(-1), 1.0, atol=1e-5)
        assert np.all(result["decoder_maps"][:, ~valid] == 0.0)
    # The kept queries are the best-scoring ones.
    probs = np.exp(raw["logits"]) / np.exp(raw["logits"]).sum(-1, keepdims=True)
    best = np.argsort(-probs[0, :, :-1].max(-1), kind="stable")[:2]
    np.testing.assert_array_equal(results[0]["queries"], best)


def _set_no_object_bias(model, value):
    bias = to_numpy(model.class_head.bias).copy()
    bias[-1] = value
    model.class_head.bias.assign(bias)


def test_threshold_keeps_real_objects_and_layer_picks_the_decoder_layer(model, inputs, raw):
    images, mask = inputs
    original = to_numpy(model.class_head.bias).copy()
    try:
        # "no object" never wins: the threshold alone decides; the scores come from `raw`.
        _set_no_object_bias(model, -1e3)
        logits = raw["logits"][..., :-1]
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        scores = (probs / probs.sum(-1, keepdims=True)).max(-1)
        # Half-way between the third and fourth best scores of the first image.
        threshold = float(np.sort(scores[0])[-4:-2].mean())
        results = detr_attention_maps(model, images, pixel_mask=mask, threshold=threshold,
                                      layer=0)
        np.testing.assert_array_equal(results[0]["queries"],
                                      np.argsort(-scores[0], kind="stable")[:3])
        np.testing.assert_array_equal(np.sort(results[1]["queries"]),
                                      np.nonzero(scores[1] >= threshold)[0])
        for i, result in enumerate(results):
            assert np.all(np.diff(result["scores"]) <= 0)
            expected = raw["decoder_attention_scores"][0][i].mean(0)[result["queries"]]
            np.testing.assert_allclose(result["decoder_maps"].reshape(len(expected), 4),
                                       expected, atol=1e-6)
        # "no object" always wins: nothing is kept, whatever the threshold; top_k still keeps.
        _set_no_object_bias(model, 1e3)
        none = detr_attention_maps(model, images, pixel_mask=mask, threshold=0.0)[0]
        assert none["queries"].shape == (0,) and none["decoder_maps"].shape == (0, 2, 2)
        assert none["boxes"].shape == (0, 4)
        assert len(detr_attention_maps(model, images, pixel_mask=mask, top_k=4)[1]["queries"]) == 4
    finally:
        model.class_head.bias.assign(original)


def test_encoder_maps_are_the_attention_rows_under_the_points(model, inputs, raw):
    images, mask = inputs
    assert model.backbone.output_stride == STRIDE
    # Without padding, one point in each feature position; float coordinates are floored.
    points = np.array([[10, 10], [20, 40], [40, 15.5], [63.9, 47]])
    maps = detr_encoder_attention(model, images, points)
    assert maps.shape == (2, 4, 2, 2) and maps.dtype == np.float32
    plain = to_numpy(model({"images": images}, training=False))
    attention = plain["encoder_attention_scores"][-1].mean(axis=1)  # (batch, h * w, h * w)
    for p, (y, x) in enumerate(points):
        index = int(y // STRIDE) * 2 + int(x // STRIDE)
        np.testing.assert_allclose(maps[:, p].reshape(2, -1), attention[:, index], atol=1e-6)
    np.testing.assert_allclose(maps.sum((2, 3)), 1.0, atol=1e-5)
    # With padding: the rows of the padded batch's attention, zero on the padded column.
    points = np.array([[10, 10], [35, 15]])
    maps = detr_encoder_attention(model, images, points, pixel_mask=mask, layer=0)
    attention = raw["encoder_attention_scores"][0].mean(axis=1)
    np.testing.assert_allclose(maps.reshape(2, 2, 4), attention[:, [0, 2]], atol=1e-6)
    assert np.all(maps[1, :, :, 1] == 0.0)
    np.testing.assert_allclose(maps.sum((2, 3)), 1.0, atol=1e-5)


def test_bad_points_raise(model, inputs):
    images, mask = inputs
    for points in ([[64, 0]], [[0, 48]], [[-1, 3]]):
        with pytest.raises(ValueError, match="inside"):
            detr_encoder_attention(model, images, points, pixel_mask=mask)
    with pytest.raises(ValueError, match=r"\(n_points, 2\)"):
        detr_encoder_attention(model, images, [10, 10])
    with pytest.raises(ValueError, match="padding in image 1"):
        detr_encoder_attention(model, images, [[10, 10], [45, 20]], pixel_mask=mask)
    with pytest.raises(ValueError, match="layer"):
        detr_encoder_attention(model, images, [[10, 10]], layer=1)


def _check_png(path, figsize, dpi):
    with Image.open(path) as picture:
        assert picture.size == (figsize[0] * dpi, figsize[1] * dpi)
        assert np.asarray(picture.convert("RGB"), "float32").std() > 0


@pytest.mark.backend_independent
def test_png_writers(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.random((40, 50, 3))
    padded = np.zeros((64, 96, 3))
    padded[:40, :50] = image
    result = {
        "queries": np.array([3, 0]), "labels": np.array([1, 2]), "scores": np.array([0.9, 0.8]),
        "boxes": np.array([[2.0, 3.0, 30.0, 35.0], [20.0, 5.0, 48.0, 20.0]]),
        "decoder_maps": rng.random((2, 2, 3)).astype("float32"),
        "feature_mask": np.array([[True, True, False], [True, True, False]]),
        "image_size": np.array([40, 50]),
    }
    for picture, name in ((image, "unpadded"), (padded, "padded"), (padded * 255, "uint")):
        path = plot_detr_decoder_attention(picture, result, str(tmp_path / f"{name}.png"),
                                           class_names=["a", "b", "c"], dpi=40, figsize=(6, 2))
        _check_png(path, (6, 2), 40)
    none_kept = {**result, "queries": np.zeros(0, int), "labels": np.zeros(0, int),
                 "scores": np.zeros(0), "boxes": np.zeros((0, 4)),
                 "decoder_maps": np.zeros((0, 2, 3), "float32")}
    _check_png(plot_detr_decoder_attention(image, none_kept, str(tmp_path / "none.png")),
               (2.5, 2.5), 100)
    maps = rng.random((3, 2, 3)).astype("float32")
    maps[:, :, 2] = 0.0
    path = plot_detr_encoder_attention(image, maps, [[5, 5], [30, 10], [20, 45]],
                                       str(tmp_path / "encoder.png"), dpi=50, figsize=(8, 2))
    _check_png(path, (8, 2), 50)
    with pytest.raises(ValueError, match="inside"):
        plot_detr_encoder_attention(image, maps, [[5, 5], [30, 10], [45, 20]],
                                    str(tmp_path / "bad.png"))
    with pytest.raises(ValueError, match="n_points"):
        plot_detr_encoder_attention(image, maps, [[5, 5]], str(tmp_path / "bad.png"))
    with pytest.raises(ValueError, match="detr_attention_maps"):
        plot_detr_decoder_attention(image, {"boxes": []}, str(tmp_path / "bad.png"))
