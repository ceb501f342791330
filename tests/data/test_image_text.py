import json
import logging
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_vtx.data import (
    SHAPE_CLASSES,
    BadFileReport,
    ImageTextData,
    dataset_from_pairs,
    group_captions,
    load_pair_data,
    pairs_from_csv,
    pairs_from_jsonl,
    read_pairs,
)


class HashTokenizer:
    """A stand-in in-graph tokenizer: hashed words, padded with 0 to a fixed length."""

    sequence_length = 6

    def __call__(self, strings):
        words = tf.strings.split(strings)
        ids = tf.strings.to_hash_bucket_fast(words, 997) + 1
        return ids.to_tensor(shape=(None, self.sequence_length))


TOKENIZER = HashTokenizer()


def _token_ids(captions):
    return np.asarray(TOKENIZER(tf.constant(captions)))


def _batches(dataset):
    return [{k: np.asarray(v) for k, v in batch.items()} for batch in dataset]


def _concat(batches, key):
    return np.concatenate([b[key] for b in batches])


def _level_images(n, size=12):
    """Image i is flat grey at level 10 i + 5, so that it can be recognised after cropping."""
    return np.stack([np.full((size, size + 4, 3), 10 * i + 5, np.uint8) for i in range(n)])


def _image_ids(images):
    return np.rint((images.mean(axis=(1, 2, 3)) - 5) / 10).astype(int)


def _check_pairs(batches, captions_of):
    """Every image comes with (one of) its own captions; returns the image ids seen."""
    ids = _image_ids(_concat(batches, "images"))
    tokens = _concat(batches, "token_ids")
    for i, row in zip(ids, tokens):
        expected = _token_ids(captions_of[i])
        assert any(np.array_equal(row, e) for e in expected), f"image {i} got a wrong caption"
    return ids


# --- Reading pairs files -------------------------------------------------------------------


@pytest.mark.backend_independent
def test_csv_quoting_unicode_and_image_root(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text(
        "\ufeffid,image,caption\n"  # a byte-order mark, an extra column
        '1,a.png,"a red circle, small"\n'
        '2,sub/b.png,"the ""big"" square\non two lines"\n'
        "\n"
        "3,/abs/c.png,un cercle rouge à gauche — 赤い円 ✓\n",
        encoding="utf-8",
    )
    paths, captions = pairs_from_csv(path, image_root="/data")
    assert paths == ["/data/a.png", "/data/sub/b.png", "/abs/c.png"]
    assert captions == ["a red circle, small", 'the "big" square\non two lines',
                        "un cercle rouge à gauche — 赤い円 ✓"]
    # By default relative paths are relative to the CSV file's folder.
    paths, _ = pairs_from_csv(path)
    assert paths[0] == str(tmp_path / "a.png")


@pytest.mark.backend_independent
def test_csv_other_columns_and_delimiter(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("text\tfile\na, b and c\tx.jpg\n")
    paths, captions = pairs_from_csv(path, image_root="r", image_column="file",
                                     caption_column="text", delimiter="\t")
    assert (paths, captions) == (["r/x.jpg"], ["a, b and c"])
    # read_pairs picks the delimiter from the extension and groups nothing here.
    assert read_pairs(path, image_root="r", image_column="file", caption_column="text") == (
        ["r/x.jpg"], [["a, b and c"]])


@pytest.mark.parametrize(
    "text, match",
    [
        ("", r"empty"),
        ("image,caption\n", r"no \(image, caption\) rows"),
        ("path,caption\na.png,x\n", r"no column 'image'.*\['path', 'caption'\]"),
        ("image,caption\na.png,ok\nb.png,one, two\n", r"line 3: expected 2 fields"),
        ("image,caption\na.png,ok\n\nb.png,  \n", r"line 4: the caption is empty"),
        ("image,caption\n,a caption\n", r"line 2: the image path is empty"),
        ('image,caption\na.png,"ok" x\n', r"line 2: malformed CSV"),
    ],
)
@pytest.mark.backend_independent
def test_csv_errors_name_the_file_and_line(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        pairs_from_csv(path)
    assert "bad.csv" in str(info.value)


@pytest.mark.backend_independent
def test_jsonl_single_and_several_captions(tmp_path):
    path = tmp_path / "pairs.jsonl"
    records = [
        {"image": "a.png", "caption": "a circle"},
        {"image": "b.png", "caption": ["a square", "un carré bleu ✓"], "id": 3},
    ]
    path.write_text(json.dumps(records[0]) + "\n\n" + json.dumps(records[1], ensure_ascii=False)
                    + "\n", encoding="utf-8")
    paths, captions = pairs_from_jsonl(path, image_root=tmp_path / "img")
    assert paths == [str(tmp_path / "img" / "a.png"), str(tmp_path / "img" / "b.png")]
    assert captions == ["a circle", ["a square", "un carré bleu ✓"]]
    other = tmp_path / "other.jsonl"
    other.write_text('{"file": "/x.png", "text": "hi"}\n')
    assert pairs_from_jsonl(other, image_column="file", caption_column="text") == (
        ["/x.png"], ["hi"])


@pytest.mark.parametrize(
    "line, match",
    [
        ('{"image": "a.png", "caption": "x"', r"line 2: not valid JSON"),
        ('["a.png", "x"]', r"line 2: expected a JSON object"),
        ('{"image": "a.png"}', r"line 2: the record has no key 'caption'"),
        ('{"image": "a.png", "caption": 3}', r"line 2: 'caption' must be a string"),
        ('{"image": "a.png", "caption": []}', r"line 2: 'caption' must be a non-empty"),
        ('{"image": 7, "caption": "x"}', r"line 2: 'image' must be a path string"),
    ],
)
@pytest.mark.backend_independent
def test_jsonl_errors_name_the_file_and_line(tmp_path, line, match):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"image": "ok.png", "caption": "fine"}\n' + line + "\n")
    with pytest.raises(ValueError, match=match) as info:
        pairs_from_jsonl(path)
    assert "bad.jsonl" in str(info.value)


@pytest.mark.backend_independent
def test_group_captions_keeps_first_appearance_order():
    paths, captions = group_captions(["b", "a", "b", "a"], ["1", ["2", "3"], "4", "5"])
    assert paths == ["b", "a"] and captions == [["1", "4"], ["2", "3", "5"]]


# --- dataset_from_pairs --------------------------------------------------------------------


@pytest.mark.backend_independent
def test_element_spec_and_pairs_stay_together_through_shuffle_and_crops():
    images = _level_images(20)
    captions = [f"caption number {i}" for i in range(20)]
    dataset = dataset_from_pairs(images, captions, TOKENIZER, image_size=8, batch_size=6,
                                 seed=1)
    spec = dataset.element_spec
    assert set(spec) == {"images", "token_ids"}
    assert spec["images"].dtype == tf.float32 and spec["images"].shape.as_list() == [6, 8, 8, 3]
    assert spec["token_ids"].dtype == tf.int32 and spec["token_ids"].shape.as_list() == [6, 6]
    assert int(dataset.cardinality()) == 3  # known: Keras shows progress and needs no repeat
    batches = _batches(dataset)
    assert len(batches) == 3  # 20 pairs, the remainder of 2 dropped when shuffling
    ids = _check_pairs(batches, [[c] for c in captions])
    assert len(set(ids)) == 18 and not np.array_equal(ids, np.arange(18))
    x = _concat(batches, "images")
    assert x.min() >= 0 and x.max() <= 255


@pytest.mark.backend_independent
def test_evaluation_keeps_order_remainder_and_pixels():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    captions = ["a", "b c", "d e f", "g", "h"]
    dataset = dataset_from_pairs(images, captions, TOKENIZER, image_size=16, batch_size=2,
                                 shuffle=False, augment=False)
    batches = _batches(dataset)
    assert [len(b["images"]) for b in batches] == [2, 2, 1]
    np.testing.assert_allclose(_concat(batches, "images"), images.astype("float32"), atol=1e-3)
    np.testing.assert_array_equal(_concat(batches, "token_ids"), _token_ids(captions))


@pytest.mark.backend_independent
def test_grayscale_and_non_square_images_become_square_rgb():
    images = np.full((3, 20, 30, 1), 100, np.uint8)
    batch = _batches(dataset_from_pairs(images, ["a"] * 3, TOKENIZER, image_size=10,
                                        batch_size=3, shuffle=False))[0]
    assert batch["images"].shape == (3, 10, 10, 3)
    np.testing.assert_allclose(batch["images"], 100.0, atol=1e-3)


@pytest.mark.backend_independent
def test_seed_makes_epochs_reproducible():
    images = _level_images(16)
    captions = [[f"first {i}", f"second {i}", f"third {i}"] for i in range(16)]

    def first_epoch(seed):
        dataset = dataset_from_pairs(images, captions, TOKENIZER, image_size=8,
                                     batch_size=16, seed=seed)
        return _batches(dataset)[0]

    a, b, c = first_epoch(3), first_epoch(3), first_epoch(4)
    for key in ("images", "token_ids"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["token_ids"], c["token_ids"])
    # Each epoch is a new shuffle and a new draw of captions.
    dataset = dataset_from_pairs(images, captions, TOKENIZER, image_size=8, batch_size=16)
    e1, e2 = _batches(dataset)[0], _batches(dataset)[0]
    assert not np.array_equal(e1["token_ids"], e2["token_ids"])


@pytest.mark.backend_independent
def test_several_captions_per_image_sample_first_and_flatten():
    images = _level_images(6)
    captions = [[f"a {i}", f"b {i}", f"c {i}"] if i % 2 else f"only {i}" for i in range(6)]
    groups = [c if isinstance(c, list) else [c] for c in captions]

    sampled = dataset_from_pairs(images, captions, TOKENIZER, image_size=8, batch_size=6)
    seen = set()
    for _ in range(20):
        batches = _batches(sampled)
        ids = _check_pairs(batches, groups)
        assert sorted(ids) == list(range(6))  # one element per image per epoch
        seen |= {tuple(row) for row in _concat(batches, "token_ids")}
    assert len(seen) == 3 * 3 + 3, "sampling did not reach every caption over 20 epochs"

    first = _batches(dataset_from_pairs(images, captions, TOKENIZER, image_size=8,
                                        batch_size=4, shuffle=False,
                                        captions_per_image="first"))
    np.testing.assert_array_equal(_concat(first, "token_ids"),
                                  _token_ids([g[0] for g in groups]))

    flat = _batches(dataset_from_pairs(images, captions, TOKENIZER, image_size=8,
                                       batch_size=4, captions_per_image="flatten",
                                       drop_remainder=False))
    ids = _check_pairs(flat, groups)
    assert sorted(ids) == sorted(i for i, g in enumerate(groups) for _ in g)
    assert len({tuple(row) for row in _concat(flat, "token_ids")}) == 12


def _write_pngs(folder, levels):
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, level in enumerate(levels):
        name = f"img{i}.png"
        Image.fromarray(np.full((10 + i, 12, 3), level, np.uint8)).save(folder / name)
        names.append(name)
    return names


@pytest.mark.backend_independent
def test_corrupt_and_missing_files_are_skipped_counted_and_named(tmp_path, caplog):
    names = _write_pngs(tmp_path, [10 * i + 5 for i in range(6)])
    (tmp_path / "img2.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    paths = [str(tmp_path / n) for n in names] + [str(tmp_path / "missing.jpg")]
    captions = [f"picture {i}" for i in range(7)]
    report = BadFileReport()
    dataset = dataset_from_pairs(paths, captions, TOKENIZER, image_size=8, batch_size=2,
                                 report=report, seed=0)
    with caplog.at_level(logging.WARNING, logger="keras_vtx.data"):
        for _ in range(2):  # a second epoch must not count the files again
            batches = _batches(dataset)
    ids = _check_pairs(batches, [[c] for c in captions])
    assert sorted(ids) == [0, 1, 3, 4]  # 5 good files, the remainder of 1 dropped
    assert report.count == 2
    assert sorted(p.rsplit("/", 1)[-1] for p in report.examples) == ["img2.png", "missing.jpg"]
    assert "img2.png" in caplog.text and "missing.jpg" in caplog.text


@pytest.mark.backend_independent
@pytest.mark.parametrize("captions_per_image, steps", [("sample", 3), ("flatten", 3)])
def test_a_shard_that_skips_unreadable_files_takes_as_many_steps(tmp_path, captions_per_image,
                                                                steps):
    # 12 images, a global batch of 4 over two shards: 3 batches of 2 pairs in each (one
    # caption per image). Two of shard 0's files are unreadable: it tops its epochs up
    # from its next pass, so that both take 3 steps in every epoch.
    names = _write_pngs(tmp_path, [10 * i + 5 for i in range(12)])
    for name in names[0:4:2]:  # images 0 and 2: shard 0 keeps 0, 2, 4, ...
        (tmp_path / name).write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    paths = [str(tmp_path / n) for n in names]
    captions = [[f"picture {i}"] for i in range(12)]
    for shard in range(2):
        report = BadFileReport()
        dataset = dataset_from_pairs(paths, captions, TOKENIZER, image_size=8, batch_size=2,
                                     captions_per_image=captions_per_image, num_shards=2,
                                     shard_index=shard, report=report, seed=0)
        for _ in range(2):
            batches = _batches(dataset)
            assert len(batches) == steps
            assert all(i % 2 == shard for i in _check_pairs(batches, captions))
        assert report.count == (2 if shard == 0 else 0)


@pytest.mark.backend_independent
def test_bad_files_raise_names_the_file(tmp_path):
    names = _write_pngs(tmp_path, [50, 60])
    paths = [str(tmp_path / n) for n in names] + [str(tmp_path / "gone.png")]
    dataset = dataset_from_pairs(paths, ["x", "y", "z"], TOKENIZER, image_size=8, batch_size=3,
                                 shuffle=False, bad_files="raise")
    with pytest.raises(Exception, match="gone.png"):
        _batches(dataset)


@pytest.mark.backend_independent
def test_shards_split_images_disjointly():
    images = _level_images(9)
    captions = [f"c {i}" for i in range(9)]
    seen = []
    for index in range(3):
        dataset = dataset_from_pairs(images, captions, TOKENIZER, image_size=8, batch_size=1,
                                     shuffle=False, num_shards=3, shard_index=index)
        seen.append(set(_image_ids(_concat(_batches(dataset), "images")).tolist()))
    assert all(len(s) == 3 for s in seen) and set().union(*seen) == set(range(9))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(image_size=0), ValueError, "image_size"),
        (dict(batch_size=-1), ValueError, "batch_size"),
        (dict(captions_per_image="all"), ValueError, "captions_per_image"),
        (dict(crop_scale=(0.5, 1.5)), ValueError, "crop_scale"),
        (dict(bad_files="ignore"), ValueError, "bad_files"),
        (dict(num_shards=2, shard_index=2), ValueError, "shard_index"),
        (dict(tokenizer="clip"), TypeError, "tokenizer"),
        (dict(tokenizer=lambda s: tf.strings.split(s)), ValueError, "dense token ids"),
    ],
)
@pytest.mark.backend_independent
def test_bad_pipeline_arguments(kwargs, error, match):
    kwargs = {"tokenizer": TOKENIZER, "image_size": 8, **kwargs}
    with pytest.raises(error, match=match):
        dataset_from_pairs(_level_images(4), ["a"] * 4, **kwargs)


@pytest.mark.backend_independent
def test_bad_pair_arguments():
    images = _level_images(3)
    with pytest.raises(ValueError, match="same length"):
        dataset_from_pairs(images, ["a", "b"], TOKENIZER)
    with pytest.raises(ValueError, match="empty"):
        dataset_from_pairs([], [], TOKENIZER)
    with pytest.raises(ValueError, match=r"`images`.*shape"):
        dataset_from_pairs(images[..., :2], ["a"] * 3, TOKENIZER)
    with pytest.raises(ValueError, match=r"`captions\[1\]`"):
        dataset_from_pairs(images, ["a", 3, "c"], TOKENIZER)
    with pytest.raises(ValueError, match=r"`captions\[2\]`"):
        dataset_from_pairs(images, ["a", ["b"], []], TOKENIZER)


def test_datasets_feed_a_keras_model_on_this_backend():
    images = keras.Input((8, 8, 3), name="images")
    token_ids = keras.Input((6,), dtype="int32", name="token_ids")
    pooled = keras.layers.GlobalAveragePooling2D()(images)
    text = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(1000, 3)(token_ids))
    model = keras.Model({"images": images, "token_ids": token_ids},
                        keras.layers.Concatenate()([pooled, text]))
    dataset = dataset_from_pairs(_level_images(10), ["a b"] * 10, TOKENIZER, image_size=8,
                                 batch_size=4, shuffle=False, augment=False)
    out = model.predict(dataset, verbose=0)
    assert out.shape == (10, 6)
    np.testing.assert_allclose(out[:, :3], _level_images(10).mean(axis=(1, 2)), atol=1e-3)


# --- load_pair_data ------------------------------------------------------------------------


def test_shapes_default_split_labels_and_captions():
    data = load_pair_data("shapes:60", image_size=16, batch_size=8, tokenizer=TOKENIZER,
                          validation_split=0.25)
    assert isinstance(data, ImageTextData)
    train, validation = data
    assert data.class_names == SHAPE_CLASSES and data.tokenizer is TOKENIZER
    assert (data.num_train, data.num_validation, data.steps_per_epoch) == (45, 15, 5)
    assert len(data.validation_labels) == len(data.validation_captions) == 15
    for label, (caption,) in zip(data.validation_labels, data.validation_captions):
        assert caption.startswith("a ") and f" {SHAPE_CLASSES[label]} " in caption
    first_epoch = _batches(train)
    assert len(first_epoch) == 5
    val = _batches(validation)
    assert [len(b["images"]) for b in val] == [8, 7]
    np.testing.assert_array_equal(_concat(val, "token_ids"),
                                  _token_ids([c[0] for c in data.validation_captions]))
    # Same seed, same data and the same first training batch.
    again = load_pair_data("shapes:60", image_size=16, batch_size=8, tokenizer=TOKENIZER,
                           validation_split=0.25)
    again_first = _batches(again.train)[0]
    for key in ("images", "token_ids"):
        np.testing.assert_array_equal(again_first[key], first_epoch[0][key])
    assert again.validation_captions == data.validation_captions
    other = load_pair_data("shapes:60", image_size=16, batch_size=8, tokenizer=TOKENIZER,
                           validation_split=0.25, seed=1)
    assert other.validation_captions != data.validation_captions


@pytest.mark.backend_independent
def test_load_pair_data_from_csv_splits_by_image_and_reports_bad_files(tmp_path):
    names = _write_pngs(tmp_path / "img", [10 * i + 5 for i in range(10)])
    (tmp_path / "img" / "img4.png").write_bytes(b"broken")
    rows = [f"{name},caption {i} v{j}" for i, name in enumerate(names) for j in range(2)]
    path = tmp_path / "pairs.csv"
    path.write_text("image,caption\n" + "\n".join(rows) + "\n")
    data = load_pair_data(path, image_size=8, batch_size=2, validation_split=0.3,
                          tokenizer=TOKENIZER, image_root=tmp_path / "img")
    assert (data.num_train, data.num_validation) == (7, 3)  # split by image, not by row
    assert data.class_names is None and data.validation_labels is None
    assert all(len(c) == 2 for c in data.validation_captions)
    val_ids = {int(c[0].split()[1]) for c in data.validation_captions}
    train = _batches(data.train)
    val = _batches(data.validation)
    groups = [[f"caption {i} v0", f"caption {i} v1"] for i in range(10)]
    train_ids = set(_check_pairs(train, groups).tolist())
    # 7 training images (6 readable if img4 is one of them), an odd one dropped: 6 seen.
    assert not train_ids & val_ids and len(train_ids) == 6
    assert set(_check_pairs(val, groups).tolist()) == val_ids - {4}
    assert data.bad_files.count == 1 and data.bad_files.examples[0].endswith("img4.png")

    # Flattened captions: an epoch is every (image, caption) pair of the training split.
    flat = load_pair_data(path, image_size=8, batch_size=2, validation_split=0.3,
                          tokenizer=TOKENIZER, image_root=tmp_path / "img",
                          captions_per_image="flatten")
    assert flat.num_train == 14 and flat.steps_per_epoch == 7

    # An explicit validation file.
    jsonl = tmp_path / "val.jsonl"
    jsonl.write_text(json.dumps({"image": "img/img0.png", "caption": ["x", "y"]}) + "\n")
    data = load_pair_data(path, validation_spec=jsonl, image_size=8, batch_size=2,
                          tokenizer=TOKENIZER, image_root=tmp_path / "img")
    assert (data.num_train, data.num_validation) == (10, 1)


# Building CLIP's 49,408-token BPE tables takes ~15 s on a shared CPU.
@pytest.mark.slow
@pytest.mark.backend_independent
def test_default_tokenizer_is_clip():
    pytest.importorskip("keras_vtx.models.clip.clip_tokenizer")
    data = load_pair_data("shapes:20", image_size=8, batch_size=4)
    batch = _batches(data.validation)[0]
    assert batch["token_ids"].shape == (4, 77) and batch["token_ids"].dtype == np.int32
    assert np.all(batch["token_ids"][:, 0] == 49406)
    expected = np.asarray(data.tokenizer([c[0] for c in data.validation_captions[:4]]))
    np.testing.assert_array_equal(batch["token_ids"], expected)
    # One default tokenizer for every pipeline: its BPE graph is traced once.
    assert load_pair_data("shapes:20", image_size=8, batch_size=4).tokenizer is data.tokenizer


@pytest.mark.backend_independent
def test_tfds_missing_raises_import_error_naming_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match="pip install tensorflow-datasets"):
        load_pair_data("tfds:coco_captions", image_size=32, tokenizer=TOKENIZER)


@pytest.mark.backend_independent
def test_bad_load_arguments(tmp_path):
    with pytest.raises(ValueError, match="spec"):
        load_pair_data("imagenet", image_size=8, tokenizer=TOKENIZER)
    with pytest.raises(ValueError, match="spec"):
        load_pair_data(3, image_size=8, tokenizer=TOKENIZER)
    with pytest.raises(ValueError, match="spec"):
        load_pair_data("shapes:lots", image_size=8, tokenizer=TOKENIZER)
    with pytest.raises(ValueError, match="spec"):
        load_pair_data("tfds:", image_size=8, tokenizer=TOKENIZER)
    with pytest.raises(ValueError, match="validation_split"):
        load_pair_data("shapes:10", image_size=8, validation_split=0.0, tokenizer=TOKENIZER)
    with pytest.raises(ValueError, match="validation_spec"):
        load_pair_data("shapes:10", image_size=8, validation_spec="v.csv",
                       tokenizer=TOKENIZER)
    with pytest.raises(TypeError, match="flip"):
        load_pair_data("shapes:10", image_size=8, flip=True, tokenizer=TOKENIZER)
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        load_pair_data(tmp_path / "nowhere.csv", image_size=8, tokenizer=TOKENIZER)
    one = tmp_path / "one.csv"
    one.write_text("image,caption\na.png,x\na.png,y\n")
    with pytest.raises(ValueError, match="too few"):
        load_pair_data(one, image_size=8, tokenizer=TOKENIZER)
    with pytest.raises(ValueError, match="delimiter"):
        pairs_from_csv(one, delimiter=", ")
    with pytest.raises(ValueError, match="path"):
        read_pairs(tmp_path / "pairs.txt")


def test_the_former_argument_names_still_work_with_a_warning():
    with pytest.warns(DeprecationWarning, match="`source` is now `spec`"):
        data = load_pair_data(source="shapes:20", image_size=8, batch_size=4,
                              tokenizer=TOKENIZER)
    assert data.num_validation == 4
    with pytest.raises(TypeError, match="Pass `spec` only"):
        load_pair_data("shapes:20", source="shapes:30", image_size=8, tokenizer=TOKENIZER)


def test_every_loader_returns_a_loaded_data():
    from keras_vtx.data import ClassificationData, ImageTextData, LoadedData, load_detection_data

    assert issubclass(ClassificationData, LoadedData) and issubclass(ImageTextData, LoadedData)
    pairs = load_pair_data("shapes:20", image_size=8, batch_size=4, tokenizer=TOKENIZER)
    assert isinstance(pairs, LoadedData) and pairs.steps_per_epoch == 4
    detection = load_detection_data("shapes:10", batch_size=2, validation_split=0.2,
                                    data_dir=None)
    train, validation, info = detection
    assert isinstance(detection, LoadedData) and info is detection.info
    assert detection.num_classes == info.num_classes and detection.class_names == info.class_names
    assert detection.steps_per_epoch == info.steps_per_epoch == 4



def test_flattened_captions_give_every_shard_the_same_steps():
    # Shard 0 holds images 0, 2, 4 (5 + 4 + 2 = 11 captions), shard 1 images 1, 3, 5
    # (1 + 2 + 3 = 6): each takes the smallest shard's 6 pairs, 3 batches of 2, so two
    # hosts take as many steps (without it: 5 and 3).
    lengths = [5, 1, 4, 2, 2, 3]
    images = _level_images(6)
    captions = [[f"caption {i} {k}" for k in range(n)] for i, n in enumerate(lengths)]
    groups = captions
    counts = []
    for shard in range(2):
        dataset = dataset_from_pairs(images, captions, TOKENIZER, image_size=8, batch_size=2,
                                     captions_per_image="flatten", num_shards=2,
                                     shard_index=shard, seed=3)
        for _ in range(2):  # other pairs of the larger shard each epoch, as many batches
            batches = _batches(dataset)
            ids = _check_pairs(batches, groups)
            assert all(i % 2 == shard for i in ids), ids
            counts.append(len(batches))
    assert counts == [3, 3, 3, 3], counts
    # The loader's step count says the same, from the captions alone.
    from keras_vtx.data.image_text import _epoch_size

    assert _epoch_size(captions, {"captions_per_image": "flatten", "num_shards": 2}) // 4 == 3
