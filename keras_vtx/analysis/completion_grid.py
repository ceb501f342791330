"""Image GPT's completion grid: given top rows, sampled completions, and the original.

The iGPT paper's figure 1 shows, for each held-out image, the top half given to
the model, several completions sampled from it and the original. An
autoregressive model samples the hidden rows pixel by pixel (`ImageGPT.generate`);
a BERT model samples every hidden pixel at once from its bidirectional
predictions with the hidden rows masked.
"""

import numpy as np

from keras_vtx.analysis._plotting import new_figure, save_png

# The hidden rows of the "given" column are shown grey.
HIDDEN_GREY = 128


def _check_model(model):
    from keras_vtx.models.igpt import ImageGPT

    if not isinstance(model, ImageGPT):
        raise TypeError(f"`model` must be an ImageGPT; received {type(model).__name__}.")
    if model.palette is None:
        raise ValueError(
            "`model` has no `palette`: completions cannot be turned into images. Build it "
            "with `palette=ColorPalette(...)` (presets and recipes' models have one)."
        )


def _pixel_ids(model, images, pixel_ids):
    side = model.image_size
    if (images is None) == (pixel_ids is None):
        raise ValueError("Pass exactly one of `images` and `pixel_ids`.")
    if images is not None:
        return model.quantize_images(images)
    pixel_ids = np.asarray(pixel_ids)
    if pixel_ids.ndim != 2 or pixel_ids.shape[1] != side * side:
        raise ValueError(
            f"`pixel_ids` must have shape (batch, {side * side}); received {pixel_ids.shape}."
        )
    if pixel_ids.min() < 0 or pixel_ids.max() >= model.palette_size:
        raise ValueError(
            f"`pixel_ids` must be palette ids in [0, {model.palette_size}); received values "
            f"in [{pixel_ids.min()}, {pixel_ids.max()}]."
        )
    return pixel_ids.astype("int32")


def fill_masked(model, pixel_ids, mask, temperature=1.0, seed=0):
    """Samples every masked pixel at once from a BERT ImageGPT's predictions.

    Args:
        model: an `ImageGPT` with `objective="bert"`.
        pixel_ids: int `(batch, L)` palette ids.
        mask: bool `(batch, L)`, True where a pixel is hidden and sampled.
        temperature: float > 0.
        seed: int, for reproducible draws.

    Returns:
        int32 NumPy `(batch, L)`: `pixel_ids` with the masked pixels drawn.

    Example:
    >>> from keras_vtx.models import ImageGPT
    >>> model = ImageGPT.from_preset("igpt_tiny_test", objective="bert")
    >>> ids = np.zeros((1, 64), "int32")
    >>> mask = np.arange(64)[None] >= 32  # the bottom half
    >>> filled = fill_masked(model, ids, mask, seed=0)
    >>> bool((filled[:, :32] == 0).all()), filled.shape
    (True, (1, 64))
    """
    import keras

    if temperature <= 0:
        raise ValueError(f"`temperature` must be > 0; received {temperature}.")
    outputs = model({"pixel_ids": pixel_ids, "mask": mask}, training=False)
    logits = keras.ops.cast(outputs["logits"], "float32") / temperature
    flat = keras.ops.reshape(logits, (-1, logits.shape[-1]))
    drawn = keras.random.categorical(flat, 1, seed=seed)
    drawn = keras.ops.convert_to_numpy(keras.ops.reshape(drawn, np.shape(pixel_ids)))
    return np.where(mask, drawn, pixel_ids).astype("int32")


def completion_grid(model, images=None, pixel_ids=None, prefix_rows=None, num_samples=3,
                    seed=0, temperature=1.0, top_k=None):
    """Completions of the top rows of images by an Image GPT, as a grid of RGB images.

    Args:
        model: an `ImageGPT` with a palette (autoregressive or BERT).
        images: uint8 RGB `(n, S, S, 3)` at the model's resolution, or
        pixel_ids: int `(n, S * S)` palette ids instead.
        prefix_rows: int in `[0, S)`, the rows given to the model (default
            half).
        num_samples: int >= 1, completions per image.
        seed: int, for reproducible samples.
        temperature: float, top_k: optional int: how pixels are drawn.

    Returns:
        uint8 `(n, num_samples + 2, S, S, 3)`: per image, the given rows (the
        rest grey), `num_samples` completions and the original (quantised).

    Example:
    >>> from keras_vtx.models import ImageGPT
    >>> model = ImageGPT.from_preset("igpt_tiny_test")
    >>> images = np.zeros((2, 8, 8, 3), "uint8")
    >>> completion_grid(model, images, num_samples=2).shape
    (2, 4, 8, 8, 3)
    """
    _check_model(model)
    ids = _pixel_ids(model, images, pixel_ids)
    side = model.image_size
    prefix_rows = side // 2 if prefix_rows is None else prefix_rows
    if not isinstance(prefix_rows, (int, np.integer)) or not 0 <= prefix_rows < side:
        raise ValueError(f"`prefix_rows` must be an int in [0, {side}); received {prefix_rows!r}.")
    if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"`num_samples` must be an int >= 1; received {num_samples!r}.")
    count, given = len(ids), prefix_rows * side  # raster order: rows first
    repeated = np.repeat(ids, num_samples, axis=0)
    if model.objective == "autoregressive":
        completed = model.generate(prefix_ids=repeated[:, :given] if given else None,
                                   num_images=len(repeated), temperature=temperature,
                                   top_k=top_k, seed=seed)
    else:
        mask = np.zeros(repeated.shape, bool)
        mask[:, given:] = True
        completed = model.palette.dequantize(
            fill_masked(model, repeated, mask, temperature, seed), side)
    originals = model.palette.dequantize(ids, side)
    shown = originals.copy()
    shown[:, prefix_rows:] = HIDDEN_GREY
    completed = np.asarray(completed, np.uint8).reshape(count, num_samples, side, side, 3)
    return np.concatenate([shown[:, None], completed, originals[:, None]], axis=1)


def plot_completion_grid(grid, path, dpi=100, figsize=None):
    """Writes a completion grid (one row per image) as a PNG.

    Args:
        grid: uint8 `(n, columns, S, S, 3)` from `completion_grid`.
        path: the `.png` file to write.
        dpi: int; the PNG is `figsize * dpi` pixels.
        figsize: `(width, height)` in inches (default 1 inch per image).

    Returns:
        `path`.

    Example:
    >>> import os, tempfile
    >>> grid = np.zeros((2, 4, 8, 8, 3), "uint8")
    >>> path = os.path.join(tempfile.mkdtemp(), "grid.png")
    >>> plot_completion_grid(grid, path, figsize=(4, 2)) == path
    True
    """
    grid = np.asarray(grid)
    if grid.ndim != 5 or grid.shape[-1] != 3 or grid.shape[1] < 2:
        raise ValueError(
            "`grid` must be (images, columns >= 2, S, S, 3) as `completion_grid` returns; "
            f"received shape {grid.shape}."
        )
    rows, columns = grid.shape[:2]
    figure = new_figure(figsize or (columns, rows), dpi, "Drawing a completion grid")
    titles = ["given"] + [f"sample {i + 1}" for i in range(columns - 2)] + ["original"]
    for i in range(rows):
        for j in range(columns):
            axes = figure.add_subplot(rows, columns, i * columns + j + 1)
            # Nearest neighbour keeps each palette pixel a flat square.
            axes.imshow(grid[i, j], interpolation="nearest")
            axes.set_axis_off()
            if i == 0:
                axes.set_title(titles[j], fontsize=7)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.92, wspace=0.05,
                           hspace=0.05)
    return save_png(figure, path, dpi)
