"""Drawing detection boxes with their class names and scores on an image, with Pillow.

Pillow is a keras_vtx dependency, so drawing needs no optional package; the
text uses Pillow's built-in bitmap font.
"""

import os

import keras
import numpy as np

from keras_vtx.constants import IMAGENET_MEAN, IMAGENET_STD

# Distinct, saturated colours, one per label (cycled).
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212))


def _to_uint8_image(image, denormalize):
    image = np.asarray(keras.ops.convert_to_numpy(image))
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"`image` must be (height, width) or (height, width, 1 or 3); "
                         f"received shape {image.shape}.")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.dtype == np.uint8:
        return image.copy()
    image = image.astype("float32")
    if denormalize:
        # Undoes the ImageNet normalisation of keras_vtx's detection pipeline.
        mean = np.array(IMAGENET_MEAN, "float32")
        std = np.array(IMAGENET_STD, "float32")
        image = (image * std + mean) * 255.0
    elif image.size and image.max() <= 1.0:
        image = image * 255.0
    return np.clip(np.rint(image), 0, 255).astype("uint8")


def draw_detections(image, boxes, labels=None, scores=None, class_names=None, path=None,
                    score_threshold=None, denormalize=False, line_width=2, colors=PALETTE):
    """Draws boxes (absolute xyxy) with their class names and scores; optionally saves a PNG.

    Args:
        image: `(height, width, 3)` (or grey `(height, width)`) pixels: uint8,
            or float in [0, 255] (or [0, 1] when at most 1), or ImageNet-normalised
            floats with `denormalize=True` (a batch image of
            `coco_detection_dataset`).
        boxes: `(n, 4)` absolute `(x_min, y_min, x_max, y_max)` pixel coordinates
            of this image (`post_process_detections(..., image_sizes=(h, w))`).
        labels: optional int `(n,)`; picks the colour and the text.
        scores: optional float `(n,)`, written after the class name.
        class_names: optional sequence of str indexed by label.
        path: optional file path; the drawing is saved there as a PNG.
        score_threshold: optional float; boxes scoring below it are not drawn.
        denormalize: bool, see `image`.
        line_width: int, box outline width in pixels.
        colors: sequence of RGB triples, colour `labels % len(colors)`.

    Returns:
        The drawn image, a uint8 `(height, width, 3)` NumPy array.

    Example:
    >>> image = np.zeros((40, 60, 3), "uint8")
    >>> drawn = draw_detections(image, [[5, 5, 30, 30]], labels=[0], scores=[0.9],
    ...                         class_names=["circle"])
    >>> drawn.shape, drawn.dtype.name, drawn[5, 10].tolist()
    ((40, 60, 3), 'uint8', [230, 25, 75])
    """
    from PIL import Image, ImageDraw

    pixels = _to_uint8_image(image, denormalize)
    boxes = np.asarray(keras.ops.convert_to_numpy(boxes), "float64").reshape(-1, 4)
    n = len(boxes)
    labels = None if labels is None else np.asarray(
        keras.ops.convert_to_numpy(labels)).astype("int64").reshape(-1)
    scores = None if scores is None else np.asarray(
        keras.ops.convert_to_numpy(scores), "float64").reshape(-1)
    for name, values in (("labels", labels), ("scores", scores)):
        if values is not None and len(values) != n:
            raise ValueError(f"`{name}` must have one entry per box: received {len(values)} "
                             f"for {n} boxes.")
    if line_width < 1:
        raise ValueError(f"`line_width` must be >= 1; received {line_width!r}.")
    canvas = Image.fromarray(pixels)
    draw = ImageDraw.Draw(canvas)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        if scores is not None and score_threshold is not None and scores[i] < score_threshold:
            continue
        if not np.all(np.isfinite((x0, y0, x1, y1))):
            continue
        label = None if labels is None else int(labels[i])
        color = tuple(colors[(label or 0) % len(colors)])
        x0, x1 = sorted((x0, x1))
        y0, y1 = sorted((y0, y1))
        draw.rectangle([x0, y0, max(x1 - 1, x0), max(y1 - 1, y0)], outline=color,
                       width=int(line_width))
        parts = []
        if label is not None:
            has_name = class_names is not None and 0 <= label < len(class_names)
            parts.append(str(class_names[label]) if has_name else str(label))
        if scores is not None:
            parts.append(f"{scores[i]:.2f}")
        if parts:
            text = " ".join(parts)
            left, top, right, bottom = draw.textbbox((0, 0), text)
            text_y = y0 - (bottom - top) - 2 if y0 >= bottom - top + 2 else y0 + line_width
            draw.rectangle([x0, text_y, x0 + right - left + 2, text_y + bottom - top + 2],
                           fill=color)
            draw.text((x0 + 1 - left, text_y + 1 - top), text, fill=(0, 0, 0))
    drawn = np.asarray(canvas, dtype="uint8").copy()
    if path is not None:
        folder = os.path.dirname(os.fspath(path))
        if folder:
            os.makedirs(folder, exist_ok=True)
        canvas.save(path, format="PNG")
    return drawn
