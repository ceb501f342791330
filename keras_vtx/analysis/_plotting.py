"""Shared pieces of the analysis PNG writers: matplotlib import, figures, images, overlays.

matplotlib is optional (`pip install keras-vtx[plot]`): it is imported when a
figure is drawn, and only its object-oriented API is used (no `pyplot`), so
drawing neither needs a display nor changes the caller's matplotlib state.
Every writer saves at `figsize * dpi` pixels exactly (no tight bounding box),
so the size of a PNG is known in advance.
"""

import os

import numpy as np


def import_matplotlib(purpose="Drawing figures"):
    """Returns `(Figure, FigureCanvasAgg)`, or raises an ImportError saying how to install."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            f"{purpose} needs matplotlib, an optional dependency: "
            "`pip install keras-vtx[plot]` (or `pip install matplotlib`)."
        ) from e
    return Figure, FigureCanvasAgg


def new_figure(figsize, dpi=100, purpose="Drawing figures"):
    """A matplotlib `Figure` of `figsize` inches, attached to an Agg canvas."""
    figure_cls, canvas_cls = import_matplotlib(purpose)
    width, height = (float(v) for v in figsize)
    if width <= 0 or height <= 0:
        raise ValueError(f"`figsize` must be two positive numbers; received {figsize!r}.")
    figure = figure_cls(figsize=(width, height), dpi=dpi)
    canvas_cls(figure)
    return figure


def save_png(figure, path, dpi=100):
    """Writes `figure` to the PNG file `path` (folders created) at `figsize * dpi` pixels."""
    path = os.fspath(path)
    if not path.lower().endswith(".png"):
        raise ValueError(f"`path` must name a .png file; received {path!r}.")
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    figure.savefig(path, dpi=dpi, format="png")
    return path


def as_uint8_image(image, name="image"):
    """An RGB uint8 `(height, width, 3)` array from uint8, [0, 255] or [0, 1] floats, or gray."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(
            f"`{name}` must be an image (height, width, 3) or (height, width); received "
            f"shape {image.shape}."
        )
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.dtype == np.uint8:
        return image
    image = image.astype("float32")
    if not np.isfinite(image).all():
        raise ValueError(f"`{name}` holds NaN or infinite values.")
    if image.max() <= 1.0 and image.min() >= 0.0:
        image = image * 255.0
    return np.clip(np.round(image), 0, 255).astype("uint8")


def resize_map(heatmap, height, width):
    """Resizes a 2-D map to `(height, width)` by bilinear interpolation (pixel centres)."""
    heatmap = np.asarray(heatmap, "float32")
    if heatmap.ndim != 2:
        raise ValueError(f"`heatmap` must be 2-D; received shape {heatmap.shape}.")
    rows = _interpolation(heatmap.shape[0], height)
    cols = _interpolation(heatmap.shape[1], width)
    return rows @ heatmap @ cols.T


def _interpolation(size_in, size_out):
    """The `(size_out, size_in)` matrix of 1-D linear interpolation between pixel centres."""
    centres = (np.arange(size_out) + 0.5) * size_in / size_out - 0.5
    centres = np.clip(centres, 0, size_in - 1)
    low = np.floor(centres).astype(int)
    high = np.minimum(low + 1, size_in - 1)
    frac = centres - low
    matrix = np.zeros((size_out, size_in), "float32")
    matrix[np.arange(size_out), low] += 1 - frac
    matrix[np.arange(size_out), high] += frac
    return matrix


def overlay_heatmap(axes, image, heatmap, alpha=0.5, cmap="jet", title=None):
    """Shows `image` on `axes` with `heatmap` resized over it (normalised to [0, 1])."""
    image = as_uint8_image(image)
    heat = resize_map(heatmap, image.shape[0], image.shape[1])
    span = heat.max() - heat.min()
    heat = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    axes.imshow(image)
    axes.imshow(heat, cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
    axes.set_axis_off()
    if title:
        axes.set_title(title, fontsize=8)
