"""What a ViT's embeddings learned: patch-embedding filters and position-embedding similarity.

Both pictures are the ViT paper's figure 7 (Dosovitskiy et al., ICLR 2021,
appendix D.7): on the left the top principal components of the RGB
patch-embedding filters, which look like plausible basis functions for the
fine structure inside a patch; in the centre the cosine similarity between
position embeddings, which shows that the learned 1-D table encodes the 2-D
image topology (close patches have similar embeddings, with row and column
structure).

The array functions need NumPy only; the `plot_...` functions need matplotlib
(an optional dependency, `pip install keras-vtx[plot]`).
"""

import math

import numpy as np

from keras_vtx.analysis._encoders import resolve_vit
from keras_vtx.analysis._plotting import new_figure, save_png


def _to_numpy(value):
    import keras

    return np.asarray(keras.ops.convert_to_numpy(value))


def _positive_int(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int; received {type(value).__name__} {value!r}.")
    if value < 1:
        raise ValueError(f"`{name}` must be at least 1; received {value}.")
    return int(value)


def _patch_embedding_kernel(backbone):
    """The `(ph, pw, channels, D)` kernel of the backbone's patch embedding, as float64."""
    layer = backbone.get_layer("patch_embedding")
    kernels = [w for w in layer.weights if w.path.endswith("kernel")]
    if len(kernels) != 1 or len(kernels[0].shape) != 4:
        raise ValueError(
            "`model`'s patch embedding must hold one 4-D kernel (ph, pw, channels, D); "
            f"received weights {[(w.path, tuple(w.shape)) for w in layer.weights]}."
        )
    return _to_numpy(kernels[0]).astype("float64")


def patch_embedding_components(model, num_components=28):
    """Principal components of a ViT's patch-embedding filters (ViT figure 7, left).

    The patch embedding is a linear map from a flattened `ph x pw x C` patch
    to D dimensions: its D filters are D points in `R^(ph*pw*C)`. They are
    centred and decomposed by SVD (a PCA with the filters as samples), and
    each principal direction is reshaped back into a patch so that it can be
    looked at as an image. The paper shows the top 28 of ViT-L/32.

    The sign of a principal component is arbitrary; it is fixed here so that
    the entry of largest absolute value is positive (the first one on ties),
    which makes the result deterministic.

    Args:
        model: a `ViTBackbone`, `ViTClassifier`, `CLIP` or
            `ZeroShotClassifier` (its ViT image encoder is used). Not a hybrid
            ViT: its patch embedding sees ResNet features, not pixels.
        num_components: int >= 1, components to keep; at most
            `min(D, ph * pw * C)` are returned.

    Returns:
        A dict of NumPy float32 arrays: `"components"` `(n, ph, pw, C)`
        (unit-norm directions, most variance first), `"explained_variance_ratio"`
        `(n,)` (fraction of the filters' total variance along each) and
        `"mean"` `(ph, pw, C)` (the mean filter that was removed), with
        `n = min(num_components, D, ph * pw * C)`.

    Example:
    >>> from keras_vtx.models.vit import ViTBackbone
    >>> vit = ViTBackbone(image_size=16, patch_size=4, num_layers=1,
    ...                   hidden_dim=16, num_heads=2, mlp_dim=32)
    >>> pca = patch_embedding_components(vit, num_components=5)
    >>> pca["components"].shape, pca["explained_variance_ratio"].shape
    ((5, 4, 4, 3), (5,))
    >>> bool(np.all(np.diff(pca["explained_variance_ratio"]) <= 0))
    True
    """
    num_components = _positive_int(num_components, "num_components")
    backbone, _ = resolve_vit(model, name="model")
    if backbone.hybrid_stem_depths:
        raise ValueError(
            "`model` is a hybrid ViT (`hybrid_stem_depths`="
            f"{backbone.hybrid_stem_depths}): its patch embedding embeds ResNet stem "
            "features, not RGB pixels, so its filters cannot be shown as image patches. "
            "Use a plain (non-hybrid) ViT."
        )
    kernel = _patch_embedding_kernel(backbone)
    ph, pw, channels, width = kernel.shape
    # Row-major flattening of (ph, pw, C) so that a row reshapes back into a patch.
    filters = kernel.reshape(ph * pw * channels, width).T
    mean = filters.mean(axis=0)
    centred = filters - mean
    _, singular, directions = np.linalg.svd(centred, full_matrices=False)
    total = float(np.sum(singular**2))
    if not total > 0.0:
        raise ValueError(
            "`model`'s patch-embedding filters are all equal (zero variance): they have no "
            "principal components. Was the model built with constant weights?"
        )
    n = min(num_components, width, ph * pw * channels)
    directions = directions[:n]
    largest = np.argmax(np.abs(directions), axis=1)
    signs = np.sign(directions[np.arange(n), largest])
    directions = directions * np.where(signs == 0, 1.0, signs)[:, None]
    # Variance ratios are over the filters' total variance (all components), as PCA's.
    ratio = singular[:n] ** 2 / total
    return {
        "components": directions.reshape(n, ph, pw, channels).astype("float32"),
        "explained_variance_ratio": ratio.astype("float32"),
        "mean": mean.reshape(ph, pw, channels).astype("float32"),
    }


def _component_tiles(components):
    """`(n, ph, pw, C)` float array from the dict or the array, validated."""
    if isinstance(components, dict):
        if "components" not in components:
            raise ValueError(
                "`components` given as a dict must hold a \"components\" array (as "
                f"`patch_embedding_components` returns); received keys {sorted(components)}."
            )
        components = components["components"]
    tiles = np.asarray(_to_numpy(components), "float64")
    if tiles.ndim != 4 or tiles.shape[0] < 1:
        raise ValueError(
            "`components` must be an array (n, ph, pw, channels) with n >= 1 or the dict of "
            f"`patch_embedding_components`; received shape {tiles.shape}."
        )
    if not np.isfinite(tiles).all():
        raise ValueError("`components` holds NaN or infinite values.")
    return tiles


def _as_picture(tile):
    """A tile scaled to [0, 1] on its own: RGB for 3 channels, else the channels side by side."""
    if tile.shape[-1] == 3:
        picture = tile
    else:
        # One gray panel per channel, left to right: no channel is hidden or mixed.
        picture = np.concatenate([tile[..., c] for c in range(tile.shape[-1])], axis=1)
    low, high = picture.min(), picture.max()
    if high - low > 0:
        return (picture - low) / (high - low)
    return np.full_like(picture, 0.5)


def plot_patch_embedding_components(components, path, columns=7, dpi=100, figsize=None):
    """Draws patch-embedding principal components as a grid of tiles; writes a PNG.

    Each tile is min-max scaled to [0, 1] on its own, as in the ViT paper's
    figure 7 (left), so the tiles show shapes and colours, not magnitudes.
    Tiles with 3 channels are drawn as RGB; other channel counts are drawn in
    gray, channels side by side.

    Args:
        components: the dict of `patch_embedding_components` or its
            `"components"` array `(n, ph, pw, channels)`.
        path: file path of the PNG (folders are created).
        columns: int, tiles per row (the paper: 7 columns, 4 rows for 28).
        dpi: int, pixels per inch.
        figsize: `(width, height)` in inches, or None for about one inch per
            tile; the PNG is `figsize * dpi` pixels.

    Returns:
        `path`.

    Example:
    >>> import os, tempfile
    >>> tiles = np.random.default_rng(0).normal(size=(6, 4, 4, 3))
    >>> out = os.path.join(tempfile.mkdtemp(), "components.png")
    >>> plot_patch_embedding_components(tiles, out, columns=3) == out
    True
    """
    tiles = _component_tiles(components)
    columns = _positive_int(columns, "columns")
    columns = min(columns, tiles.shape[0])
    rows = math.ceil(tiles.shape[0] / columns)
    if figsize is None:
        figsize = (max(1.0 * columns, 2.5), 1.0 * rows + 0.4)
    figure = new_figure(figsize, dpi, purpose="Plotting patch-embedding components")
    top = 1.0 - 0.35 / figure.get_figheight()
    grid = figure.add_gridspec(rows, columns, left=0.02, right=0.98, bottom=0.02, top=top,
                               wspace=0.1, hspace=0.1)
    for k, tile in enumerate(tiles):
        axes = figure.add_subplot(grid[k // columns, k % columns])
        picture = _as_picture(tile)
        if picture.ndim == 3:
            axes.imshow(picture, interpolation="nearest")
        else:
            axes.imshow(picture, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        axes.set_axis_off()
    kind = "RGB embedding filters" if tiles.shape[-1] == 3 else "Embedding filters"
    figure.suptitle(f"{kind} (first {tiles.shape[0]} principal components)", fontsize=9,
                    y=1.0 - 0.05 / figure.get_figheight(), va="top")
    return save_png(figure, path, dpi)


def _pair(value, name):
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        value = (value, value)
    try:
        pair = tuple(int(v) for v in value)
        ok = len(pair) == 2 and min(pair) >= 1 and all(
            not isinstance(v, (bool, np.bool_)) and float(v) == int(v) for v in value
        )
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"`{name}` must be an int or a pair (rows, columns) of positive ints; "
                         f"received {value!r}.")
    return pair


def position_embedding_similarity(model=None, *, embeddings=None, grid_size=None,
                                  num_prefix_tokens=0):
    """Cosine similarity between the position embeddings of every pair of patches.

    The ViT paper's figure 7 (centre): the 1-D position table of a trained
    ViT, seen on the 2-D patch grid, gives each patch embeddings most similar
    to those of its own row and column and of its neighbours.

    Give either `model` (its ViT's learned table, class-token rows dropped)
    or `embeddings` with `grid_size`, not both.

    Args:
        model: a `ViTBackbone`, `ViTClassifier`, `CLIP` or
            `ZeroShotClassifier` (its ViT image encoder is used).
        embeddings: array `(num_prefix_tokens + gh * gw, D)` of position
            embeddings, patches in row-major order after the prefix rows.
        grid_size: int or `(gh, gw)`, the patch grid of `embeddings`.
        num_prefix_tokens: int, rows of `embeddings` before the patches (1
            for a class token); dropped.

    Returns:
        A float32 NumPy array `(gh, gw, gh, gw)`: `sim[i, j, k, l]` is the
        cosine similarity of the embedding of patch `(i, j)` with that of
        patch `(k, l)`. An all-zero embedding has similarity 0 to everything.

    Example:
    >>> rows, cols = np.meshgrid(np.arange(3), np.arange(4), indexing="ij")
    >>> table = np.stack([rows.ravel(), cols.ravel(), np.ones(12)], axis=1)
    >>> sim = position_embedding_similarity(embeddings=table, grid_size=(3, 4))
    >>> sim.shape, float(sim[1, 2, 1, 2])
    ((3, 4, 3, 4), 1.0)
    """
    if (model is None) == (embeddings is None):
        raise ValueError(
            "Give exactly one of `model` (a ViT model) and `embeddings` (an array with "
            f"`grid_size`); received model={type(model).__name__}, "
            f"embeddings={type(embeddings).__name__}."
        )
    if model is not None:
        if grid_size is not None or num_prefix_tokens:
            raise ValueError(
                "`grid_size` and `num_prefix_tokens` come from `model` when `model` is given; "
                f"received grid_size={grid_size!r}, num_prefix_tokens={num_prefix_tokens!r}."
            )
        backbone, _ = resolve_vit(model, name="model")
        layer = backbone.get_layer("position_embedding")
        table = _to_numpy(layer.position_embeddings)
        grid = tuple(backbone.grid_size)
        prefix = int(backbone.num_prefix_tokens)
        source = "`model`'s position embedding"
    else:
        if grid_size is None:
            raise ValueError("`grid_size` (gh, gw) is needed with `embeddings`; received None.")
        grid = _pair(grid_size, "grid_size")
        if isinstance(num_prefix_tokens, (bool, np.bool_)) or not isinstance(
            num_prefix_tokens, (int, np.integer)
        ) or num_prefix_tokens < 0:
            raise ValueError(
                f"`num_prefix_tokens` must be an int >= 0; received {num_prefix_tokens!r}."
            )
        prefix = int(num_prefix_tokens)
        table = _to_numpy(embeddings)
        source = "`embeddings`"
    table = np.asarray(table, "float64")
    if table.ndim == 3 and table.shape[0] == 1:
        table = table[0]  # A `(1, N, D)` table, as some checkpoints store it.
    expected = prefix + grid[0] * grid[1]
    if table.ndim != 2 or table.shape[0] != expected:
        raise ValueError(
            f"{source} must have shape ({expected}, D): {prefix} prefix rows + "
            f"{grid[0]} x {grid[1]} patches; received shape {table.shape}."
        )
    if not np.isfinite(table).all():
        raise ValueError(f"{source} holds NaN or infinite values.")
    patches = table[prefix:]
    norms = np.linalg.norm(patches, axis=1, keepdims=True)
    unit = patches / np.where(norms > 0, norms, 1.0)
    similarity = np.clip(unit @ unit.T, -1.0, 1.0)
    return similarity.reshape(grid + grid).astype("float32")


def plot_position_embedding_similarity(similarity, path, dpi=100, figsize=None):
    """Draws position-embedding similarities as a grid of small heat maps; writes a PNG.

    As the ViT paper's figure 7 (centre): the small map in row `i`, column `j`
    is `similarity[i, j]`, the similarity of patch `(i, j)`'s embedding to
    every patch's; all maps share one colour scale from -1 to 1.

    Args:
        similarity: array `(gh, gw, gh, gw)` from
            `position_embedding_similarity`.
        path: file path of the PNG (folders are created).
        dpi: int, pixels per inch.
        figsize: `(width, height)` in inches, or None for a size that grows
            with the grid; the PNG is `figsize * dpi` pixels.

    Returns:
        `path`.

    Example:
    >>> import os, tempfile
    >>> table = np.random.default_rng(0).normal(size=(9, 8))
    >>> sim = position_embedding_similarity(embeddings=table, grid_size=3)
    >>> out = os.path.join(tempfile.mkdtemp(), "similarity.png")
    >>> plot_position_embedding_similarity(sim, out) == out
    True
    """
    sim = np.asarray(_to_numpy(similarity), "float32")
    if sim.ndim != 4 or sim.shape[:2] != sim.shape[2:] or min(sim.shape) < 1:
        raise ValueError(
            "`similarity` must be an array (gh, gw, gh, gw) as `position_embedding_similarity` "
            f"returns; received shape {sim.shape}."
        )
    if not np.isfinite(sim).all():
        raise ValueError("`similarity` holds NaN or infinite values.")
    gh, gw = sim.shape[:2]
    if figsize is None:
        figsize = (max(3.5, 0.55 * gw + 1.8), max(3.0, 0.55 * gh + 1.0))
    figure = new_figure(figsize, dpi, purpose="Plotting position-embedding similarity")
    width, height = figure.get_figwidth(), figure.get_figheight()
    left, right = 0.7 / width, 1.0 - 1.2 / width
    bottom, top = 0.6 / height, 1.0 - 0.15 / height
    grid = figure.add_gridspec(gh, gw, left=left, right=right, bottom=bottom, top=top,
                               wspace=0.08, hspace=0.08)
    image = None
    for i in range(gh):
        for j in range(gw):
            axes = figure.add_subplot(grid[i, j])
            image = axes.imshow(sim[i, j], cmap="viridis", vmin=-1.0, vmax=1.0,
                                interpolation="nearest")
            axes.set_xticks([])
            axes.set_yticks([])
            # Row and column numbers (from 1, as the paper) along the outer edges only.
            if j == 0:
                axes.set_ylabel(str(i + 1), rotation=0, fontsize=7, ha="right", va="center")
            if i == gh - 1:
                axes.set_xlabel(str(j + 1), fontsize=7)
    figure.text(0.15 / width, (bottom + top) / 2, "Input patch row", rotation=90,
                ha="center", va="center", fontsize=9)
    figure.text((left + right) / 2, 0.12 / height, "Input patch column", ha="center",
                va="bottom", fontsize=9)
    colour_axes = figure.add_axes([right + 0.25 / width, bottom, 0.15 / width, top - bottom])
    figure.colorbar(image, cax=colour_axes, label="Cosine similarity")
    return save_png(figure, path, dpi)
