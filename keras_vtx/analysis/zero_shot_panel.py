"""CLIP zero-shot panel: each image beside the bars of its top-k class probabilities.

The CLIP paper (Radford et al. 2021, figure 21) shows, for example images of
many data sets, the five most probable zero-shot prompts as horizontal bars,
the correct label's bar in its own colour and its rank in the title. The same
picture from a `ZeroShotClassifier`: `zero_shot_top_k` gives the arrays,
`plot_zero_shot_panel` draws them.
"""

import math

import numpy as np

from keras_vtx.analysis._plotting import as_uint8_image, new_figure, save_png
from keras_vtx.analysis.embedding_sets import _check_batch_size, _to_numpy

BAR_COLOR = "#4c72b0"
TRUE_COLOR = "#55a868"  # the correct label's bar, green as in the paper's figure


def zero_shot_top_k(classifier, images, k=5, batch_size=32):
    """The `k` most probable classes of each image under a CLIP zero-shot classifier.

    Equal probabilities are ordered by class index (as `predict_top_k`).

    Args:
        classifier: a `ZeroShotClassifier`.
        images: `(N, height, width, channels)` images as the classifier takes
            them (raw pixels for a CLIP with `include_preprocessing`): NumPy
            or a tensor of any backend.
        k: int in `[1, classifier.num_classes]`.
        batch_size: images per forward pass.

    Returns:
        A dict with `"indices"` int64 `(N, k)` class indices, `"probabilities"`
        float32 `(N, k)` (descending along each row) and `"labels"`, a list
        of N lists of k class-name strings.

    Example:
    >>> from keras_vtx.models.clip import ZeroShotClassifier
    >>> class ToyCLIP(keras.Model):  # an image is its own 3-d embedding
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.logit_scale = self.add_weight(shape=(), initializer="zeros")
    ...     def encode_images(self, images):
    ...         return keras.ops.normalize(keras.ops.mean(images, axis=(1, 2)), axis=-1)
    >>> classifier = ZeroShotClassifier(ToyCLIP(), ["red", "green", "blue"],
    ...                                 class_embeddings=np.eye(3))
    >>> images = np.zeros((2, 4, 4, 3), "float32")
    >>> images[0, ..., 2] = 1.0  # a blue image
    >>> images[1, ..., 0] = 1.0  # a red one
    >>> top = zero_shot_top_k(classifier, images, k=2)
    >>> top["labels"]
    [['blue', 'red'], ['red', 'green']]
    >>> top["probabilities"].shape
    (2, 2)
    """
    from keras_vtx.models.clip import ZeroShotClassifier

    if not isinstance(classifier, ZeroShotClassifier):
        raise TypeError(
            f"`classifier` must be a ZeroShotClassifier; received {type(classifier).__name__}."
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not (
        1 <= k <= classifier.num_classes
    ):
        raise ValueError(
            f"`k` must be an int between 1 and the number of classes "
            f"({classifier.num_classes}); received {k!r}."
        )
    images = _to_numpy(images)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(
            "`images` must be a non-empty batch (N, height, width, channels); received shape "
            f"{images.shape}."
        )
    probabilities = classifier.predict_probabilities(
        images.astype("float32", copy=False), batch_size=_check_batch_size(batch_size)
    )
    # A stable sort of the negated values: ties go to the lower class index.
    indices = np.argsort(-probabilities, axis=-1, kind="stable")[:, :int(k)]
    names = list(classifier.class_names)
    return {
        "indices": indices.astype("int64"),
        "probabilities": np.take_along_axis(probabilities, indices, axis=-1).astype("float32"),
        "labels": [[names[i] for i in row] for row in indices],
    }


def _check_top_k(top_k, count):
    keys = ("indices", "probabilities", "labels")
    if not isinstance(top_k, dict) or not all(key in top_k for key in keys):
        raise ValueError(
            f"`top_k` must be the dict of `zero_shot_top_k` (keys {keys}); received "
            f"{type(top_k).__name__}"
            f"{' with keys ' + str(sorted(top_k)) if isinstance(top_k, dict) else ''}."
        )
    indices = np.asarray(top_k["indices"])
    probabilities = np.asarray(top_k["probabilities"], "float32")
    labels = [[str(name) for name in row] for row in top_k["labels"]]
    if indices.ndim != 2 or indices.shape[0] != count or probabilities.shape != indices.shape \
            or [len(row) for row in labels] != [indices.shape[1]] * count:
        raise ValueError(
            f"`top_k` must hold (N, k) indices, probabilities and labels for the N={count} "
            f"images; received indices {indices.shape}, probabilities {probabilities.shape} "
            f"and {len(labels)} label rows."
        )
    return indices, probabilities, labels


def _display_image(image):
    """uint8 RGB; images outside [0, 255] (normalised inputs) are stretched to fit."""
    image = np.asarray(image)
    if image.dtype != np.uint8 and image.size and (image.min() < 0 or image.max() > 255):
        image = image.astype("float32")
        image = (image - image.min()) / max(float(image.max() - image.min()), 1e-12)
    return as_uint8_image(image)


def _true_rank(true_label, indices, labels):
    """`(rank or None, name or None)` of the true label (a class index or name) in the row."""
    if true_label is None:
        return None, None
    if isinstance(true_label, (str, np.str_)):
        name = str(true_label)
        return (labels.index(name) + 1 if name in labels else None), name
    if isinstance(true_label, (bool, np.bool_)) or not isinstance(true_label, (int, np.integer)):
        raise ValueError(
            "`true_labels` must hold class names (str) or class indices (int); received "
            f"{true_label!r}."
        )
    hits = np.flatnonzero(indices == int(true_label))
    if hits.size:
        return int(hits[0]) + 1, labels[int(hits[0])]
    return None, None


def plot_zero_shot_panel(images, top_k, path, true_labels=None, columns=2, dpi=100,
                         figsize=None):
    """Writes a CLIP-style zero-shot panel (PNG): each image beside its top-k bars.

    In the style of figure 21 of the CLIP paper (Radford et al. 2021): the
    bars of the `k` most probable prompts, best at the top, with their
    probabilities. With `true_labels`, the true class's bar is drawn in green
    and the title says "correct rank: r" (or "not in top k").

    Args:
        images: `(N, height, width, 3)` (or gray `(N, height, width)`) images,
            uint8 or float in [0, 255] or [0, 1]; other ranges (normalised
            inputs) are stretched to [0, 255] for display.
        top_k: the dict of `zero_shot_top_k` for these images.
        path: file path of the PNG (folders are created).
        true_labels: optional sequence of N class names or class indices
            (None for an unknown label).
        columns: images per row of the panel.
        dpi: pixels per inch.
        figsize: `(width, height)` in inches; default `(5 * columns, 2.2 *
            rows)`. The PNG is `figsize * dpi` pixels.

    Returns:
        `path`.

    Example:
    >>> import os, tempfile
    >>> top = {"indices": np.array([[1, 0]]), "probabilities": np.array([[0.7, 0.3]]),
    ...        "labels": [["dog", "cat"]]}
    >>> out = os.path.join(tempfile.mkdtemp(), "panel.png")
    >>> plot_zero_shot_panel(np.zeros((1, 8, 8, 3)), top, out, true_labels=["cat"],
    ...                      dpi=20) == out
    True
    """
    images = _to_numpy(images)
    if images.ndim not in (3, 4) or len(images) == 0:
        raise ValueError(
            "`images` must be a non-empty batch (N, height, width, 3) or (N, height, width); "
            f"received shape {images.shape}."
        )
    count = len(images)
    indices, probabilities, labels = _check_top_k(top_k, count)
    if true_labels is not None:
        true_labels = list(true_labels)
        if len(true_labels) != count:
            raise ValueError(
                f"`true_labels` must have one label per image ({count}); received "
                f"{len(true_labels)}."
            )
    if isinstance(columns, bool) or not isinstance(columns, (int, np.integer)) or columns < 1:
        raise ValueError(f"`columns` must be a positive int; received {columns!r}.")
    columns = min(int(columns), count)
    rows = math.ceil(count / columns)
    k = indices.shape[1]
    if figsize is None:
        figsize = (5.0 * columns, 2.2 * rows)
    figure = new_figure(figsize, dpi, "Plotting the zero-shot panel")
    grid = figure.add_gridspec(rows, columns, left=0.02, right=0.97, bottom=0.08, top=0.88,
                               wspace=0.15, hspace=0.6)
    for n in range(count):
        # Per image: the image, room for the prompt names (the bars' tick
        # labels) and the bars.
        cell = grid[divmod(n, columns)].subgridspec(1, 3, width_ratios=[1.0, 1.1, 1.5],
                                                    wspace=0.05)
        image_axes = figure.add_subplot(cell[0])
        image_axes.imshow(_display_image(images[n]))
        image_axes.set_axis_off()
        rank, name = (None, None) if true_labels is None else _true_rank(
            true_labels[n], indices[n], labels[n])
        if true_labels is not None and true_labels[n] is not None:
            title = f"correct rank: {rank}" if rank else f"not in top {k}"
            if name is not None:
                title = f"{_short(name, 36)}\n{title}"
            image_axes.set_title(title, fontsize=8)
        bar_axes = figure.add_subplot(cell[2])
        colors = [TRUE_COLOR if rank == i + 1 else BAR_COLOR for i in range(k)]
        positions = np.arange(k)
        bar_axes.barh(positions, probabilities[n], color=colors, height=0.7)
        bar_axes.set_yticks(positions, labels=[_short(label) for label in labels[n]],
                            fontsize=7)
        bar_axes.invert_yaxis()  # the most probable prompt at the top
        bar_axes.set_xlim(0.0, 1.0)
        bar_axes.tick_params(axis="x", labelsize=6)
        for i, p in enumerate(probabilities[n]):
            bar_axes.text(min(float(p), 0.75) + 0.02, i, f"{p:.2f}", va="center", fontsize=6)
        for side in ("top", "right"):
            bar_axes.spines[side].set_visible(False)
    save_png(figure, path, dpi)
    return path


def _short(label, width=24):
    return label if len(label) <= width else label[:width - 1] + "\u2026"
