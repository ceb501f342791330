"""DETR attention pictures: decoder cross-attention per object, encoder self-attention at pixels.

Carion et al. 2020 ("End-to-End Object Detection with Transformers") explain
DETR with two kinds of picture: figure 6 overlays, for each predicted object,
the last decoder layer's cross-attention of its object query over the image
(it lands on the object's extremities: heads, legs, edges), and figure 3 shows
the last encoder layer's self-attention of a few reference points (the encoder
already separates instances). The array functions here return those maps as
NumPy (no matplotlib needed); the `plot_...` functions draw them.

The attention probabilities come out of the model through an explicit option:
`DETR.from_preset(preset, return_attention_scores=True)` (the weights are kept).
"""

import keras
import numpy as np

from keras_vtx.analysis._plotting import as_uint8_image, new_figure, overlay_heatmap, save_png

_HOW = "`DETR.from_preset(preset, return_attention_scores=True)` (weights are kept)"


def _check_model(model):
    from keras_vtx.models.detr.detr import DETR

    if not isinstance(model, DETR):
        raise TypeError(f"`model` must be a keras_vtx DETR; received {type(model).__name__}.")
    if not model.return_attention_scores:
        raise ValueError(
            "`model` was built without attention outputs (`return_attention_scores=False`). "
            f"Build it with {_HOW}, or `DETR(..., return_attention_scores=True)`."
        )


def _run(model, images, pixel_mask):
    """Runs `model` in inference mode; returns (outputs as NumPy, images, pixel mask)."""
    _check_model(model)
    images = np.asarray(keras.ops.convert_to_numpy(images), "float32")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"`images` must be (batch, height, width, 3), normalised as the model takes them; "
            f"received shape {images.shape}."
        )
    if pixel_mask is None:
        pixel_mask = np.ones(images.shape[:3], bool)
    pixel_mask = np.asarray(keras.ops.convert_to_numpy(pixel_mask)).astype(bool)
    if pixel_mask.shape != images.shape[:3]:
        raise ValueError(
            f"`pixel_mask` must be (batch, height, width) = {images.shape[:3]}; received "
            f"shape {pixel_mask.shape}."
        )
    outputs = model({"images": images, "pixel_mask": pixel_mask.astype("int32")}, training=False)
    outputs = keras.tree.map_structure(lambda t: np.asarray(keras.ops.convert_to_numpy(t)),
                                       outputs)
    return outputs, images, pixel_mask


def _check_layer(layer, count, kind):
    """`layer` as an index into the model's `count` layers of `kind`, or a clear error."""
    if not isinstance(layer, (int, np.integer)) or isinstance(layer, bool):
        raise TypeError(f"`layer` must be an int; received {layer!r}.")
    if count == 0:
        raise ValueError(f"The model has no {kind} layers; it has no {kind} attention to show.")
    if not -count <= layer < count:
        raise ValueError(
            f"`layer` must index one of the model's {count} {kind} layers (from {-count} to "
            f"{count - 1}); received {layer}."
        )
    return int(layer)


def detr_attention_maps(model, images, pixel_mask=None, threshold=0.7, top_k=None, layer=-1):
    """Decoder cross-attention of each predicted object over the feature map (DETR figure 6).

    A query is kept, as in the paper's figure, when its most likely class is
    not "no object" and its best object-class probability is at least
    `threshold`; with `top_k`, instead, the `top_k` queries with the best
    object-class probability are kept, whatever their class (handy for
    untrained models). Kept objects are sorted by score, best first.

    Args:
        model: a `DETR` built with `return_attention_scores=True`.
        images: `(batch, height, width, 3)`, normalised as the model takes them
            (ImageNet mean and std).
        pixel_mask: optional `(batch, height, width)`, 1 for real pixels and 0
            for padding; by default every pixel is real.
        threshold: float, the least score of a kept object (without `top_k`).
        top_k: optional int, keep exactly this many queries per image
            (at most `num_queries`).
        layer: int, the decoder layer (negative counts from the last).

    Returns:
        A list with one dict per image: `"queries"` int `(n,)`, the kept object
        queries; `"labels"` int `(n,)`; `"scores"` float32 `(n,)`; `"boxes"`
        float32 `(n, 4)`, absolute `(x1, y1, x2, y2)` in the unpadded image;
        `"decoder_maps"` float32 `(n, h, w)`, each kept query's cross-attention
        (mean over heads) over the `h x w` feature map, zero on padding;
        `"feature_mask"` bool `(h, w)`, the real (unpadded) feature positions;
        and `"image_size"` int `(2,)`, the unpadded `(height, width)`.

    Example:
    >>> from keras_vtx.models.detr import DETR
    >>> model = DETR.from_preset("detr_tiny_test", return_attention_scores=True)
    >>> images = np.zeros((1, 64, 48, 3), "float32")
    >>> result = detr_attention_maps(model, images, top_k=2)[0]
    >>> result["decoder_maps"].shape, result["boxes"].shape
    ((2, 2, 2), (2, 4))
    >>> bool(np.allclose(result["decoder_maps"].sum((1, 2)), 1.0, atol=1e-5))
    True
    """
    _check_model(model)
    layer = _check_layer(layer, model.num_decoder_layers, "decoder")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer))
                              or not 0 < top_k <= model.num_queries):
        raise ValueError(
            f"`top_k` must be None or an int from 1 to the model's `num_queries` "
            f"({model.num_queries}); received {top_k!r}."
        )
    outputs, images, pixel_mask = _run(model, images, pixel_mask)
    cross = np.asarray(outputs["decoder_attention_scores"][layer], "float32")
    # Figure 6 shows one map per object: the heads' mean.
    cross = cross.mean(axis=1)
    feature_mask = outputs["feature_mask"].astype(bool)
    h, w = feature_mask.shape[1:]
    logits = outputs["logits"].astype("float64")
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    scores, labels = probs[..., :-1].max(-1), probs[..., :-1].argmax(-1)
    is_object = probs.argmax(-1) != probs.shape[-1] - 1
    cx, cy, bw, bh = np.moveaxis(outputs["boxes"].astype("float64"), -1, 0)
    corners = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=-1)
    results = []
    for i in range(images.shape[0]):
        # The unpadded size: boxes are relative to it (DETR's PostProcess target sizes).
        height = int(pixel_mask[i].any(1).sum())
        width = int(pixel_mask[i].any(0).sum())
        order = np.argsort(-scores[i], kind="stable")
        if top_k is not None:
            order = order[: int(top_k)]
        else:
            order = order[is_object[i][order] & (scores[i][order] >= threshold)]
        results.append({
            "queries": order.astype("int64"),
            "labels": labels[i][order].astype("int64"),
            "scores": scores[i][order].astype("float32"),
            "boxes": (corners[i][order] * [width, height, width, height]).astype("float32"),
            "decoder_maps": cross[i][order].reshape(len(order), h, w).astype("float32"),
            "feature_mask": feature_mask[i],
            "image_size": np.array([height, width], "int64"),
        })
    return results


def detr_encoder_attention(model, images, points, pixel_mask=None, layer=-1):
    """Encoder self-attention of the feature positions under reference pixels (DETR figure 3).

    A point `(y, x)` falls in the feature position `(y // s, x // s)`, `s`
    being the backbone's output stride (32, or 16 with `dilation`); its row of
    the encoder layer's self-attention (mean over heads) is returned as a map.

    Args:
        model: a `DETR` built with `return_attention_scores=True`.
        images: `(batch, height, width, 3)`, normalised as the model takes them.
        points: `(n_points, 2)` pixel coordinates `(y, x)` in the images, the
            same for every image; each must be a real (unpadded) pixel of each.
        pixel_mask: optional `(batch, height, width)`, 1 for real pixels.
        layer: int, the encoder layer (negative counts from the last).

    Returns:
        float32 `(batch, n_points, h, w)`: each point's attention over the
        `h x w` feature map, summing to 1 over the real positions.

    Example:
    >>> from keras_vtx.models.detr import DETR
    >>> model = DETR.from_preset("detr_tiny_test", return_attention_scores=True)
    >>> maps = detr_encoder_attention(model, np.zeros((1, 64, 48, 3), "float32"),
    ...                               [[10, 10], [40, 40]])
    >>> maps.shape, bool(np.allclose(maps.sum((2, 3)), 1.0, atol=1e-5))
    ((1, 2, 2, 2), True)
    """
    _check_model(model)
    layer = _check_layer(layer, model.num_encoder_layers, "encoder")
    shape = tuple(np.shape(keras.ops.convert_to_numpy(images)))
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 2 or not np.issubdtype(points.dtype, np.number):
        raise ValueError(
            f"`points` must be (n_points, 2) pixel coordinates (y, x); received shape "
            f"{points.shape} of {points.dtype}."
        )
    if len(shape) == 4:
        inside = ((points >= 0) & (points < np.array(shape[1:3]))).all(1)
        if not inside.all():
            raise ValueError(
                f"`points` must lie inside the images (0 <= y < {shape[1]}, 0 <= x < "
                f"{shape[2]}); received {points[~inside].tolist()}."
            )
    pixels = np.floor(points).astype("int64")
    if pixel_mask is not None:
        mask = np.asarray(keras.ops.convert_to_numpy(pixel_mask)).astype(bool)
        if mask.ndim == 3 and mask.shape == shape[:3]:
            _check_real(points, ~mask[:, pixels[:, 0], pixels[:, 1]])
    outputs, images, pixel_mask = _run(model, images, pixel_mask)
    attention = np.asarray(outputs["encoder_attention_scores"][layer], "float32").mean(axis=1)
    feature_mask = outputs["feature_mask"].astype(bool)
    h, w = feature_mask.shape[1:]
    # Feature position (i, j) is computed from the pixels [i * s, (i + 1) * s) of the input.
    stride = model.backbone.output_stride
    rows = np.minimum(pixels[:, 0] // stride, h - 1)
    cols = np.minimum(pixels[:, 1] // stride, w - 1)
    _check_real(points, ~feature_mask[:, rows, cols])
    maps = attention[:, rows * w + cols, :]
    return maps.reshape(images.shape[0], len(points), h, w).astype("float32")


def _check_real(points, in_padding):
    if in_padding.any():
        image, point = np.argwhere(in_padding)[0]
        raise ValueError(
            f"`points` must be real pixels of every image, not padding: point "
            f"{points[point].tolist()} is padding in image {image} (see `pixel_mask`)."
        )


def _valid_region(feature_mask, shape):
    """The rows and columns of the real feature positions (all when no mask)."""
    if feature_mask is None:
        return shape
    feature_mask = np.asarray(feature_mask, bool)
    return max(int(feature_mask.any(1).sum()), 1), max(int(feature_mask.any(0).sum()), 1)


def _grid(panels, figsize, columns=4):
    columns = min(panels, columns)
    rows = -(-panels // columns)
    return rows, columns, figsize or (2.5 * columns, 2.5 * rows)


def plot_detr_decoder_attention(image, result, path, class_names=None, dpi=100, figsize=None):
    """Writes a PNG: the kept boxes on the image, then each object's cross-attention (figure 6).

    Args:
        image: the picture, displayable RGB (uint8, or floats in [0, 1] or
            [0, 255]; not normalised): the model's input before
            normalisation, unpadded or padded (then its top-left
            `result["image_size"]` region is shown), or the original picture
            at another size of the same aspect ratio (boxes are scaled to it).
        result: one image's dict from `detr_attention_maps`.
        path: the `.png` file to write.
        class_names: optional sequence of names indexed by label.
        dpi: int, dots per inch.
        figsize: optional `(width, height)` inches; by default 2.5 per panel.

    Returns:
        `path`.

    Example:
    >>> import tempfile, os
    >>> result = {"boxes": np.array([[4.0, 4.0, 20.0, 28.0]]), "labels": np.array([1]),
    ...           "scores": np.array([0.9]), "decoder_maps": np.random.rand(1, 2, 2),
    ...           "feature_mask": np.ones((2, 2), bool), "image_size": np.array([32, 32])}
    >>> path = os.path.join(tempfile.mkdtemp(), "decoder.png")
    >>> plot_detr_decoder_attention(np.zeros((32, 32, 3)), result, path) == path
    True
    """
    from keras_vtx.analysis.draw_detections import draw_detections

    if not isinstance(result, dict) or not {"boxes", "decoder_maps"} <= set(result):
        raise ValueError("`result` must be one image's dict from `detr_attention_maps` (with "
                         f"'boxes' and 'decoder_maps'); received {type(result).__name__}.")
    pixels = as_uint8_image(image)
    maps = np.asarray(result["decoder_maps"], "float32")
    boxes = np.asarray(result["boxes"], "float32").reshape(-1, 4)
    if maps.ndim != 3 or len(maps) != len(boxes):
        raise ValueError(f"`result['decoder_maps']` must be (n, h, w) with n = {len(boxes)} "
                         f"boxes; received shape {maps.shape}.")
    labels = result.get("labels")
    scores = result.get("scores")
    size = result.get("image_size")
    if size is not None:
        height, width = (int(v) for v in size)
        bigger = pixels.shape[0] >= height and pixels.shape[1] >= width
        same_aspect = abs(pixels.shape[0] * width - pixels.shape[1] * height) <= (
            0.02 * height * width)
        if bigger and not same_aspect:
            # A padded input image: show only the real pixels.
            pixels = pixels[:height, :width]
        scale = np.array([pixels.shape[1] / width, pixels.shape[0] / height] * 2, "float32")
        boxes = boxes * scale
    rows, cols = _valid_region(result.get("feature_mask"), maps.shape[1:])
    rows_n, columns, figsize = _grid(len(maps) + 1, figsize)
    figure = new_figure(figsize, dpi, "plot_detr_decoder_attention")
    drawn = draw_detections(pixels, boxes, labels=labels, scores=scores, class_names=class_names)
    axes = figure.add_subplot(rows_n, columns, 1)
    axes.imshow(drawn)
    axes.set_axis_off()
    axes.set_title("detections" if len(maps) else "no object kept", fontsize=8)
    for i, heatmap in enumerate(maps):
        axes = figure.add_subplot(rows_n, columns, i + 2)
        title = f"query {int(result['queries'][i])}" if "queries" in result else f"object {i}"
        if labels is not None:
            label = int(np.asarray(labels)[i])
            name = class_names[label] if class_names is not None and 0 <= label < len(
                class_names) else str(label)
            title += f": {name}"
        if scores is not None:
            title += f" {float(np.asarray(scores)[i]):.2f}"
        overlay_heatmap(axes, pixels, heatmap[:rows, :cols], title=title)
        x0, y0, x1, y1 = boxes[i]
        axes.add_patch(_rectangle((x0, y0), x1 - x0, y1 - y0))
        # A box reaching past the image must not widen the panel.
        axes.set_xlim(-0.5, pixels.shape[1] - 0.5)
        axes.set_ylim(pixels.shape[0] - 0.5, -0.5)
    return save_png(figure, path, dpi)


def _rectangle(corner, width, height):
    from matplotlib.patches import Rectangle

    return Rectangle(corner, width, height, fill=False, edgecolor="white", linewidth=1.0)


def plot_detr_encoder_attention(image, maps, points, path, dpi=100, figsize=None):
    """Writes a PNG in DETR's figure-3 layout: the image with its points, and each point's map.

    Args:
        image: the picture, displayable RGB (uint8, or floats in [0, 1] or
            [0, 255]; not normalised): the model's input without its padding,
            so that `points` are its pixel coordinates.
        maps: `(n_points, h, w)` (or `(1, n_points, h, w)`) from
            `detr_encoder_attention`; rows and columns that are zero for every
            point (padding, which the encoder masks out) are cropped off.
        points: `(n_points, 2)` pixel coordinates `(y, x)`.
        path: the `.png` file to write.
        dpi: int, dots per inch; `figsize` an optional `(width, height)` in
            inches (by default 2.5 per panel), as for `plot_detr_decoder_attention`.

    Returns:
        `path`.

    Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "encoder.png")
    >>> maps = np.random.rand(2, 2, 3)
    >>> plot_detr_encoder_attention(np.zeros((64, 96, 3)), maps, [[5, 5], [40, 70]],
    ...                             path) == path
    True
    """
    pixels = as_uint8_image(image)
    maps = np.asarray(maps, "float32")
    if maps.ndim == 4 and maps.shape[0] == 1:
        maps = maps[0]
    points = np.asarray(points, "float32")
    if maps.ndim != 3 or points.shape != (len(maps), 2):
        raise ValueError(
            "`maps` must be (n_points, h, w) and `points` (n_points, 2); received shapes "
            f"{maps.shape} and {points.shape}."
        )
    inside = ((points >= 0) & (points < np.array(pixels.shape[:2]))).all(1)
    if not inside.all():
        raise ValueError(f"`points` must lie inside `image` {pixels.shape[:2]}; received "
                         f"{points[~inside].tolist()}.")
    used = np.abs(maps).sum(0) > 0
    rows = max(int(np.nonzero(used.any(1))[0].max(initial=0)) + 1, 1)
    cols = max(int(np.nonzero(used.any(0))[0].max(initial=0)) + 1, 1)
    colors = ("#e6194b", "#3cb44b", "#ffe119", "#0082c8", "#f58231", "#911eb4", "#46f0f0")
    rows_n, columns, figsize = _grid(len(maps) + 1, figsize)
    figure = new_figure(figsize, dpi, "plot_detr_encoder_attention")
    axes = figure.add_subplot(rows_n, columns, 1)
    axes.imshow(pixels)
    for i, (y, x) in enumerate(points):
        axes.scatter([x], [y], s=40, c=colors[i % len(colors)], edgecolors="white")
    axes.set_axis_off()
    axes.set_title("reference points", fontsize=8)
    for i, heatmap in enumerate(maps):
        axes = figure.add_subplot(rows_n, columns, i + 2)
        y, x = points[i]
        overlay_heatmap(axes, pixels, heatmap[:rows, :cols], title=f"({int(y)}, {int(x)})")
        axes.scatter([x], [y], s=25, c=colors[i % len(colors)], edgecolors="white")
        for spine in axes.spines.values():
            spine.set_edgecolor(colors[i % len(colors)])
    return save_png(figure, path, dpi)
