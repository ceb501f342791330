"""A PNG figure of linear-probe accuracy by layer (Image GPT's figure of probes by depth).

matplotlib is optional (`pip install keras-vtx[plot]`): it is imported when a
figure is drawn, and only its object-oriented API is used (no `pyplot`), so
drawing neither needs a display nor changes the caller's matplotlib state.
"""

import math
import os

import numpy as np

from keras_vtx.analysis._plotting import import_matplotlib


def _as_series(accuracies):
    """`{label: (layers, values)}` from one `{layer: accuracy}` dict or a dict of them."""
    if not isinstance(accuracies, dict) or not accuracies:
        raise ValueError(
            "`accuracies` must be a non-empty dict {layer: accuracy} or {name: {layer: "
            f"accuracy}}; received {type(accuracies).__name__} {accuracies!r:.100}."
        )
    nested = all(isinstance(v, dict) for v in accuracies.values())
    groups = accuracies if nested else {None: accuracies}
    series = {}
    for name, values in groups.items():
        if not values:
            raise ValueError(f"`accuracies[{name!r}]` holds no layers.")
        layers, scores = [], []
        for layer, score in values.items():
            if isinstance(score, dict):
                score = score.get("accuracy")
            try:
                score = float(score)
            except (TypeError, ValueError):
                score = math.nan
            if not 0.0 <= score <= 1.0:
                raise ValueError(
                    "`accuracies` values must be accuracies in [0, 1]; received "
                    f"{values[layer]!r} for layer {layer!r}."
                )
            if isinstance(layer, (bool, np.bool_)) or not isinstance(layer, (int, np.integer)):
                raise ValueError(
                    f"`accuracies` keys must be int layer indices; received {layer!r}."
                )
            layers.append(int(layer))
            scores.append(score)
        order = np.argsort(layers)
        series[name] = (np.asarray(layers)[order], np.asarray(scores)[order])
    return series


def plot_layer_probe_accuracy(accuracies, path, title=None, figsize=(6.0, 4.0), dpi=100,
                              chance=None):
    """Draws linear-probe accuracy against layer depth, best layer marked; writes a PNG.

    Args:
        accuracies: `{layer: accuracy}` (as `probe_image_gpt(...)["accuracies"]`
            or `keras_vtx.analysis.probe_layers` give; a value may also be a
            details dict with `"accuracy"`), or `{name: {layer: accuracy}}` for
            several curves on one figure (for example one and several BERT
            masks). Layers are int indices, accuracies fractions in [0, 1].
        path: file path of the PNG (folders are created).
        title: optional figure title.
        figsize: `(width, height)` in inches; the PNG is
            `round(width * dpi) x round(height * dpi)` pixels.
        dpi: int, pixels per inch.
        chance: optional float, drawn as a dashed line (for example
            `1 / num_classes`).

    Returns:
        `path`.

    Example:
    >>> import tempfile
    >>> out = os.path.join(tempfile.mkdtemp(), "probes.png")
    >>> plot_layer_probe_accuracy({0: 0.4, 1: 0.7, 2: 0.6}, out, title="demo") == out
    True
    >>> os.path.getsize(out) > 0
    True
    """
    series = _as_series(accuracies)
    Figure, FigureCanvasAgg = import_matplotlib("Plotting probe accuracies")
    figure = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    all_layers = sorted({int(v) for layers, _ in series.values() for v in layers})
    for name, (layers, scores) in series.items():
        line, = axes.plot(layers, scores, marker="o", label=name)
        best = int(np.argmax(scores))
        axes.plot(layers[best], scores[best], marker="*", markersize=16, linestyle="none",
                  color=line.get_color())
        # Labels of the first layer point right, so that they stay inside the axes.
        first = layers[best] == all_layers[0]
        axes.annotate(f"best: layer {layers[best]} ({scores[best]:.3f})",
                      (layers[best], scores[best]), textcoords="offset points",
                      xytext=(8 if first else 0, 10),
                      ha="left" if first else "center", fontsize=8, color=line.get_color())
    if len(all_layers) <= 40:  # whole layers only
        axes.set_xticks(all_layers)
    if chance is not None:
        axes.axhline(float(chance), linestyle="--", color="grey", label="chance")
    axes.set_xlabel("layer (0 = embeddings)")
    axes.set_ylabel("linear probe accuracy")
    top = max(float(np.max(s)) for _, s in series.values())
    axes.set_ylim(0.0, min(1.05, top + 0.1))
    axes.grid(True, alpha=0.3)
    if len(series) > 1 or chance is not None:
        axes.legend(loc="lower right", fontsize=8)
    if title:
        axes.set_title(title)
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    figure.savefig(path, format="png", dpi=dpi)
    return path
