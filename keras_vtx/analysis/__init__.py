"""Analysis tools: linear probes of frozen features, probe plots, detections drawn on images.

Imports without TensorFlow; a `tf.data.Dataset` given to `extract_features` is
read through its NumPy iterator.
"""

from keras_vtx.analysis.completion_grid import completion_grid, fill_masked, plot_completion_grid
from keras_vtx.analysis.draw_detections import draw_detections
from keras_vtx.analysis.linear_probe import (
    LinearProbe,
    extract_features,
    probe_layers,
    sweep_regularization,
)
from keras_vtx.analysis.probe_plot import plot_layer_probe_accuracy

__all__ = [
    "LinearProbe",
    "completion_grid",
    "draw_detections",
    "extract_features",
    "fill_masked",
    "plot_completion_grid",
    "plot_layer_probe_accuracy",
    "probe_layers",
    "sweep_regularization",
]
