
import numpy as np
import pytest
from PIL import Image

from keras_vtx.analysis.probe_plot import plot_layer_probe_accuracy

pytestmark = pytest.mark.backend_independent


def test_png_has_expected_size_and_marks_best_layer(tmp_path):
    path = tmp_path / "sub" / "probes.png"
    out = plot_layer_probe_accuracy({2: 0.5, 0: 0.25, 1: 0.75}, path, title="t",
                                    figsize=(3.0, 2.0), dpi=50, chance=0.25)
    assert out == path and path.stat().st_size > 0
    image = Image.open(path)
    assert image.format == "PNG" and image.size == (150, 100)
    # Something other than the white background was drawn.
    assert np.asarray(image.convert("L")).min() < 128


def test_several_curves_and_details_dicts(tmp_path):
    path = tmp_path / "probes.png"
    plot_layer_probe_accuracy({"1 mask": {0: 0.5, 1: 0.6},
                               "4 masks": {0: {"accuracy": 0.55}, 1: {"accuracy": 0.7}}},
                              path)
    assert Image.open(path).size == (600, 400)


@pytest.mark.parametrize("bad", [{}, {0: 1.5}, {"a": 0.5}, {0: "x"}, [0.5]])
def test_bad_accuracies(tmp_path, bad):
    with pytest.raises(ValueError, match="accuracies"):
        plot_layer_probe_accuracy(bad, tmp_path / "x.png")


def test_missing_matplotlib_names_the_extra(tmp_path, hide_matplotlib):
    with pytest.raises(ImportError, match=r"keras-vtx\[plot\]"):
        plot_layer_probe_accuracy({0: 0.5}, tmp_path / "x.png")
