import numpy as np
import pytest
from PIL import Image

from keras_vtx.analysis.draw_detections import PALETTE, draw_detections

pytestmark = pytest.mark.backend_independent


def test_writes_a_png_of_the_image_size_with_coloured_box_edges(tmp_path):
    image = np.full((48, 64, 3), 20, "uint8")
    path = tmp_path / "figures" / "detections.png"
    drawn = draw_detections(image, [[10, 20, 40, 44], [50, 5, 60, 15]], labels=[1, 3],
                            scores=[0.87, 0.4], class_names=["a", "b", "c", "d"],
                            path=str(path), line_width=2)
    assert drawn.shape == (48, 64, 3) and drawn.dtype == np.uint8
    assert path.stat().st_size > 100
    saved = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(saved, drawn)
    # The bottom and side edges of the first box take its label's colour; inside stays.
    assert drawn[43, 25].tolist() == list(PALETTE[1])
    assert drawn[35, 10].tolist() == list(PALETTE[1]) and drawn[35, 39].tolist() == list(PALETTE[1])
    assert drawn[35, 25].tolist() == [20, 20, 20]
    assert drawn[14, 50].tolist() == list(PALETTE[3])
    # The label text changes pixels above the box; the input is left untouched.
    assert (drawn[8:20, 10:40] != 20).any()
    assert np.all(image == 20)


def test_float_images_threshold_and_no_text():
    normalised = np.zeros((32, 32, 3), "float32")  # ImageNet mean: a grey image
    drawn = draw_detections(normalised, np.array([[4.0, 4.0, 20.0, 20.0], [22, 22, 30, 30]]),
                            scores=[0.9, 0.1], score_threshold=0.5, denormalize=True)
    np.testing.assert_array_equal(drawn[28, 28], np.rint(np.array([0.485, 0.456, 0.406]) * 255))
    assert drawn[19, 10].tolist() == list(PALETTE[0])
    unit = draw_detections(np.ones((8, 8)) * 0.5, np.zeros((0, 4)))
    assert unit.shape == (8, 8, 3) and np.all(unit == 128)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="image"):
        draw_detections(np.zeros((4, 4, 2)), [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="labels"):
        draw_detections(np.zeros((4, 4, 3)), [[0, 0, 1, 1]], labels=[0, 1])
