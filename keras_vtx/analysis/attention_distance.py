"""Mean attention distance of a ViT's heads, the ViT paper's figure 7 (right).

Dosovitskiy et al. 2021 (section 4.5, appendix D.7) measure how far in the
image each head integrates information: the distance in pixels between a
query patch and the patches it attends to, weighted by the attention, averaged
over query patches and images. Some heads of the lowest layers already attend
globally while others stay local, and the distance grows with depth; that is
the scatter `plot_mean_attention_distance` draws.
"""

import numpy as np

from keras_vtx.analysis import _plotting
from keras_vtx.analysis.vit_attention import _as_layers, _attention_batches


def _pair(value, name, kind=float):
    """`(a, b)` of positive `kind` (int: whole numbers only) from one number or a pair."""
    given = value
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        value = (value, value)
    try:
        pair = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2 or min(pair) <= 0 or (kind is int and any(v % 1 for v in pair)):
        what = "int" if kind is int else "number"
        raise ValueError(
            f"`{name}` must be a positive {what} or a pair of them; received {given!r}."
        )
    return tuple(kind(v) for v in pair)


def _patch_distances(grid_size, patch_size):
    """`(P, P)` Euclidean distances in pixels between the centres of a grid's patches.

    Patches are numbered row-major, as ViT's tokens after the prefix.
    """
    gh, gw = _pair(grid_size, "grid_size", kind=int)
    ph, pw = _pair(patch_size, "patch_size")
    rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    # Centres up to a common offset, which differences cancel.
    y = rows.reshape(-1) * ph
    x = cols.reshape(-1) * pw
    return np.sqrt((y[:, None] - y[None, :]) ** 2 + (x[:, None] - x[None, :]) ** 2)


def _distance_sums(layers, distances, num_prefix_tokens):
    """`(layers, heads)` sums over images and query patches of the weighted distance."""
    sums = []
    for layer in layers:
        patches = layer[:, :, num_prefix_tokens:, num_prefix_tokens:]
        # The paper's distance is between patches: attention to the class
        # token has no position, so the patch part of each row is renormalised.
        totals = patches.sum(axis=-1, keepdims=True)
        patches = np.divide(patches, totals, out=np.zeros_like(patches), where=totals > 0)
        sums.append(np.einsum("bhqk,qk->h", patches, distances))
    return np.stack(sums)


def _check_scores_shape(layers, grid_size, num_prefix_tokens):
    gh, gw = _pair(grid_size, "grid_size", kind=int)
    tokens = layers[0].shape[-1]
    if tokens != num_prefix_tokens + gh * gw:
        raise ValueError(
            f"`scores` have {tokens} tokens, but `grid_size` {(gh, gw)} with "
            f"`num_prefix_tokens={num_prefix_tokens}` means {num_prefix_tokens + gh * gw}."
        )


def mean_attention_distance_from_scores(scores, grid_size, patch_size, num_prefix_tokens=1):
    """Per layer and head, the attention-weighted mean pixel distance between patches.

    Args:
        scores: attention probabilities, a list (one per layer) of
            `(batch, heads, tokens, tokens)` arrays or one 5-D array; tokens
            are `num_prefix_tokens` prefix tokens then the patches row-major.
        grid_size: int or `(grid_height, grid_width)` patches.
        patch_size: number or `(ph, pw)`: the pixels of one grid cell.
        num_prefix_tokens: int, tokens before the patches (1 for a class
            token), dropped from rows and columns.

    Returns:
        float32 `(layers, heads)`: for each query patch, the sum over patches
        of attention times the distance between the patch centres (the patch
        part of each row renormalised to 1), averaged over query patches and
        images.

    Example:
    >>> uniform = np.full((1, 1, 2, 4, 4), 0.25)  # 1 layer, 1 image, 2 heads, 2x2 grid
    >>> mean_attention_distance_from_scores(uniform, (2, 2), 10, num_prefix_tokens=0)
    array([[8.5355..., 8.5355...]], dtype=float32)
    >>> eye = np.broadcast_to(np.eye(5), (1, 1, 2, 5, 5))  # class token + 2x2 grid
    >>> mean_attention_distance_from_scores(eye, 2, 10)
    array([[0., 0.]], dtype=float32)
    """
    num_prefix_tokens = _check_prefix(num_prefix_tokens)
    layers = _as_layers(scores)
    _check_scores_shape(layers, grid_size, num_prefix_tokens)
    sums = _distance_sums(layers, _patch_distances(grid_size, patch_size), num_prefix_tokens)
    batch, _, tokens, _ = layers[0].shape
    return (sums / (batch * (tokens - num_prefix_tokens))).astype("float32")


def _check_prefix(num_prefix_tokens):
    if isinstance(num_prefix_tokens, bool) or not isinstance(
            num_prefix_tokens, (int, np.integer)) or num_prefix_tokens < 0:
        raise ValueError(
            f"`num_prefix_tokens` must be an int >= 0; received {num_prefix_tokens!r}."
        )
    return int(num_prefix_tokens)


def mean_attention_distance(model, images, batch_size=32):
    """The mean attention distance of a model's heads over a set of images.

    The pixels of one grid cell are `image_size / grid_size`, so a hybrid's
    distances count the input pixels its ResNet stem reduces to one cell.

    Args:
        model: a `ViTBackbone`, `ViTClassifier`, `CLIP` or
            `ZeroShotClassifier` built with attention outputs
            (`return_attention_scores=True`).
        images: a batch as `model` takes them (NumPy or a backend tensor).
        batch_size: int, images per forward pass.

    Returns:
        float32 `(layers, heads)` in input pixels, as
        `mean_attention_distance_from_scores`.

    Example:
    >>> from keras_vtx.models import ViTBackbone
    >>> model = ViTBackbone(image_size=8, patch_size=4, num_layers=2, hidden_dim=8,
    ...                     num_heads=2, mlp_dim=8, return_attention_scores=True)
    >>> mean_attention_distance(model, np.zeros((3, 8, 8, 3))).shape
    (2, 2)
    """
    backbone, batches = _attention_batches(model, images, batch_size)
    grid = tuple(backbone.grid_size)
    cell = tuple(size / cells for size, cells in zip(backbone.image_size, grid))
    distances = _patch_distances(grid, cell)
    prefix = backbone.num_prefix_tokens
    total, count = 0.0, 0
    for scores in batches:
        layers = [s.astype("float64") for s in scores]
        total = total + _distance_sums(layers, distances, prefix)
        count += layers[0].shape[0] * (layers[0].shape[-1] - prefix)
    return (total / count).astype("float32")


def _as_series(distances, labels):
    """`{label: (layers, heads) array}` from one array, a list of arrays or a dict."""
    if isinstance(distances, dict):
        if labels is not None:
            raise ValueError("`labels` must be None when `distances` is a dict {label: array}.")
        series = dict(distances)
    else:
        if isinstance(distances, (list, tuple)) and distances and np.ndim(distances[0]) == 2:
            arrays = list(distances)
        else:
            arrays = [distances]
        if labels is None:
            labels = [None] * len(arrays)
        elif isinstance(labels, str):
            labels = [labels]
        if len(labels) != len(arrays):
            raise ValueError(
                f"`labels` must name each of the {len(arrays)} distance arrays; received "
                f"{labels!r}."
            )
        series = dict(zip(labels, arrays))
    if not series:
        raise ValueError("`distances` holds no arrays.")
    out = {}
    for label, array in series.items():
        array = np.asarray(array, "float32")
        if array.ndim != 2 or array.size == 0 or not np.isfinite(array).all():
            raise ValueError(
                "`distances` must be finite (layers, heads) arrays, as "
                f"`mean_attention_distance` returns; received shape {array.shape} for "
                f"{label!r}."
            )
        out[label] = array
    return out


def uniform_attention_distance(grid_size, patch_size):
    """The mean attention distance of a head that attends to every patch equally.

    The reference a local head sits well below: for a ViT's grid, the mean
    pixel distance between the centres of two patches (the query included).

    Args:
        grid_size: int or `(grid_height, grid_width)` patches.
        patch_size: number or `(ph, pw)`: the pixels of one grid cell.

    Returns:
        A float, in pixels.

    Example:
    >>> round(uniform_attention_distance((2, 2), 10), 4)  # as the uniform example above
    8.5355
    """
    return float(_patch_distances(grid_size, patch_size).mean())


def plot_mean_attention_distance(distances, path, labels=None, dpi=100, figsize=None,
                                 reference=None):
    """The ViT paper's scatter of mean attention distance by network depth; writes a PNG.

    One dot per head at x = its layer (1-based). One model's heads are coloured
    by head index, as in figure 7; several models get a colour each (appendix
    D.7, figure 11).

    Args:
        distances: `(layers, heads)` from `mean_attention_distance`, a list
            of them, or a dict `{label: array}` for several models.
        path: file path of the PNG (folders are created).
        labels: None, or a name (a list of names for a list) for the legend.
        dpi: int, pixels per inch.
        figsize: `(width, height)` in inches; default (5, 4). The PNG is
            `figsize * dpi` pixels.
        reference: optional float, drawn as a dashed line: for example
            `uniform_attention_distance(...)`, where a head that ignores
            position would sit.

    Returns:
        `path`.

    Example:
    >>> import os, tempfile
    >>> distances = np.random.default_rng(0).uniform(0, 100, size=(4, 3))
    >>> out = os.path.join(tempfile.mkdtemp(), "distance.png")
    >>> plot_mean_attention_distance({"ViT": distances, "other": distances / 2}, out) == out
    True
    """
    series = _as_series(distances, labels)
    figure = _plotting.new_figure(figsize or (5.0, 4.0), dpi,
                                  purpose="Plotting mean attention distances")
    axes = figure.add_subplot(1, 1, 1)
    max_layers = max(array.shape[0] for array in series.values())
    if len(series) == 1:
        label, array = next(iter(series.items()))
        layers, heads = array.shape
        colours = _head_colours(heads)
        for h in range(heads):
            axes.scatter(np.arange(1, layers + 1), array[:, h], s=14, color=colours[h],
                         label=f"head {h + 1}" if heads <= 16 else None)
        if label is not None:
            axes.set_title(str(label), fontsize=9)
        if heads <= 16:
            axes.legend(fontsize=6, ncol=2, loc="lower right", markerscale=0.8)
    else:
        # Small horizontal offsets keep models' dots at one depth apart.
        offsets = np.linspace(-0.15, 0.15, len(series))
        for offset, (label, array) in zip(offsets, series.items()):
            layers, heads = array.shape
            x = np.repeat(np.arange(1, layers + 1), heads) + offset
            axes.scatter(x, array.reshape(-1), s=12, alpha=0.8, label=str(label))
        axes.legend(fontsize=7, loc="lower right")
    if reference is not None:
        axes.axhline(float(reference), linestyle="--", color="grey", linewidth=1,
                     label="uniform attention")
        axes.legend(fontsize=6, ncol=2, loc="lower right", markerscale=0.8)
    axes.set_xlabel("network depth (layer)")
    axes.set_ylabel("mean attention distance (pixels)")
    axes.set_xticks(np.arange(1, max_layers + 1, max(1, max_layers // 12)))
    axes.set_xlim(0.5, max_layers + 0.5)
    top = max([float(array.max()) for array in series.values()]
              + ([float(reference)] if reference is not None else []))
    axes.set_ylim(0.0, 1.08 * top if top > 0 else 1.0)
    axes.grid(True, alpha=0.3)
    figure.subplots_adjust(left=0.14, bottom=0.13, right=0.97, top=0.92)
    return _plotting.save_png(figure, path, dpi)


def _head_colours(heads):
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(h / max(heads - 1, 1)) for h in range(heads)]
