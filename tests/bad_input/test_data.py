"""Bad input to the data loaders: errors that name the file and the line.

Part of the bad-input catalogue (docs/bad_input.md lists every case and what it
gets, with the tests in tests/data/ that guard the older ones).
"""

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from keras_vtx.data import (  # noqa: E402
    generate_shapes,
    load_detection_data,
    pairs_from_csv,
    pairs_from_jsonl,
    read_coco_annotations,
)
from keras_vtx.data.shapes import COLORS  # noqa: E402

pytestmark = pytest.mark.backend_independent

LATIN1 = "café".encode("latin-1")  # b"caf\xe9": not UTF-8


def test_coco_json_with_invalid_utf8_names_file_line_and_byte(tmp_path):
    path = tmp_path / "instances.json"
    path.write_bytes(b'{"images": [],\n "categories": [{"id": 1, "name": "' + LATIN1
                     + b'"}],\n "annotations": []}')
    with pytest.raises(ValueError, match=r"instances\.json, line 2: not valid UTF-8 \(byte "
                                         r"0xe9 at column 39\)"):
        read_coco_annotations(path)
    with pytest.raises(ValueError, match=r"instances\.json, line 2: not valid UTF-8"):
        load_detection_data(str(path))


def test_coco_json_whose_top_level_is_a_list(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"instances\.json: expected a COCO JSON object with "
                                         r"'images', .*received a JSON list at the top level"):
        read_coco_annotations(path)


@pytest.mark.parametrize("name, reader, delimiter", [("pairs.csv", pairs_from_csv, ","),
                                                     ("pairs.tsv", pairs_from_csv, "\t")])
def test_pairs_csv_and_tsv_with_invalid_utf8_name_file_and_line(tmp_path, name, reader,
                                                                delimiter):
    path = tmp_path / name
    rows = [b"image,caption", b"a.png,a cat", b"b.png,a " + LATIN1 + b" table"]
    path.write_bytes(b"\n".join(row.replace(b",", delimiter.encode()) for row in rows) + b"\n")
    with pytest.raises(ValueError, match=rf"{name}, line 3: not valid UTF-8 \(byte 0xe9"):
        reader(path, delimiter=delimiter)


def test_pairs_jsonl_with_invalid_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b'{"image": "a.png", "caption": "a cat"}\n\n'
                     b'{"image": "b.png", "caption": "' + LATIN1 + b'"}\n')
    with pytest.raises(ValueError, match=r"pairs\.jsonl, line 3: not valid UTF-8"):
        pairs_from_jsonl(path)


def test_shapes_background_is_checked_and_differs_from_every_shape():
    with pytest.raises(ValueError, match=r"`background` must be 'dark', 'color' or 'field'; received "
                                         r"'blue'"):
        generate_shapes(2, background="blue")
    data = generate_shapes(50, image_size=16, noise=0, background="color", max_shapes=2,
                           size_range=(0.5, 0.6))
    named = {tuple(v) for v in COLORS.values()}
    for image in data["images"]:
        corner = tuple(int(v) for v in image[0, 0])
        colours = {tuple(int(v) for v in p) for p in image.reshape(-1, 3)}
        assert corner in named and colours <= named and len(colours) >= 2
    # The dark default draws the same images as before the option existed.
    np.testing.assert_array_equal(generate_shapes(3, seed=4)["images"],
                                  generate_shapes(3, seed=4, background="dark")["images"])
