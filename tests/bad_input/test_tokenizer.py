"""Bad input to CLIP's tokenizer: bounded time, the reference's ids, clear errors.

Part of the bad-input catalogue (docs/bad_input.md lists every case and what it
gets). The reference is OpenAI's tokenizer (open_clip's `SimpleTokenizer`).
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_text")

from keras_vtx.models.clip.clip_tokenizer import CLIPTokenizer  # noqa: E402
from tests.models.test_clip_tokenizer import _load_reference, _reference_ids  # noqa: E402
from tests.test_case import to_numpy  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer()


def _long_texts():
    """Long words of every kind: each is cut by at least one of the tokenizer's budgets."""
    rng = np.random.default_rng(0)
    letters = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 2500))
    words = "".join(rng.choice("the photo of a cat photograph international ing".split(), 400))
    return [
        letters,                                   # short tokens: the first budget
        words,                                     # long tokens: the second budget
        "😂" * 700,                                # 32-byte tokens: the full budget
        "".join(rng.choice(["😍", "👍🏽", "a", "❤️"], 900)),
        "".join(rng.choice(list("!?.,;:-_*#"), 3000)),  # a punctuation run: one word
        "日本語中文한국어" * 300,
        "ab" * 1500 + " " + "ba" * 1500,
        " ".join([letters[:400]] * 12),            # many long words
        "7" * 3000,                                # one token per digit
        "&amp;" * 600 + " cat",                    # entities decoded before the cut
    ]


@pytest.mark.backend_independent
def test_long_words_give_the_reference_ids(tokenizer):
    """Time is bounded by the kept tokens (issue 26, item 4), the ids stay the reference's."""
    texts = _long_texts()
    expected = _reference_ids(_load_reference(), texts)
    np.testing.assert_array_equal(to_numpy(tokenizer(texts)), expected)
    # In-graph (tf.string, cleaned in TensorFlow) and with a short context too.
    np.testing.assert_array_equal(tokenizer.tokenize(tf.constant(texts)).numpy(), expected)
    short = CLIPTokenizer(sequence_length=9)
    np.testing.assert_array_equal(to_numpy(short(texts)),
                                  _reference_ids(_load_reference(), texts, length=9))


@pytest.mark.backend_independent
def test_one_megabyte_captions_finish(tmp_path):
    """Each took minutes or did not finish; a hang here becomes a failure, not a stuck CI."""
    script = textwrap.dedent("""
        import numpy as np
        from keras_vtx.models.clip.clip_tokenizer import CLIPTokenizer
        import tensorflow as tf
        tokenizer = CLIPTokenizer()
        texts = ["x" * 1_000_000, "a " * 500_000, "😂" * 250_000, " " * 1_000_000 + "a cat",
                 "photograph" * 100_000, "&lt;" * 250_000]
        ids = np.asarray(tokenizer(texts))
        assert ids.shape == (6, 77), ids.shape
        assert ids[3, :4].tolist() == [49406, 320, 2368, 49407], ids[3, :4]
        data = tf.data.Dataset.from_tensor_slices(texts).batch(6).map(tokenizer.tokenize)
        assert (next(iter(data)).numpy() == ids).all()
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


@pytest.mark.backend_independent
def test_a_long_caption_in_tf_data_matches_eager(tokenizer):
    caption = "a photo of " + "x" * 20_000 + " cat"
    data = tf.data.Dataset.from_tensor_slices([caption, "a dog"]).batch(2).map(tokenizer.tokenize)
    np.testing.assert_array_equal(next(iter(data)).numpy(),
                                  to_numpy(tokenizer([caption, "a dog"])))


def test_an_empty_list_gives_an_empty_batch(tokenizer):
    """Was a message about 'dtype float32 and shape (0,)' (issue 26, item 10)."""
    assert tuple(to_numpy(tokenizer([])).shape) == (0, 77)
    assert tuple(to_numpy(tokenizer(tf.zeros([0], tf.string))).shape) == (0, 77)
    assert tuple(CLIPTokenizer(sequence_length=5)([]).shape) == (0, 5)


def test_invalid_utf8_bytes_are_replaced(tokenizer):
    """Was a bare `RuntimeError ... utf-8`: now U+FFFD, as the tf.string path does."""
    expected = to_numpy(tokenizer(["\ufffd cat"]))
    np.testing.assert_array_equal(to_numpy(tokenizer([b"\xff cat"])), expected)
    np.testing.assert_array_equal(to_numpy(tokenizer(b"\xff cat")), expected[0])
    np.testing.assert_array_equal(to_numpy(tokenizer(tf.constant([b"\xff cat"]))), expected)
    np.testing.assert_array_equal(to_numpy(tokenizer(np.array([b"\xff cat"]))), expected)


@pytest.mark.parametrize("inputs, error, match", [
    ([1, 2], TypeError, r"a list holding int \(1\)"),
    (None, TypeError, r"received NoneType"),
    (np.zeros((2,), "float32"), TypeError, r"a list holding float"),
])
def test_inputs_that_are_not_strings_raise(tokenizer, inputs, error, match):
    with pytest.raises(error, match=match):
        tokenizer(inputs)


def test_a_rank_two_string_tensor_raises(tokenizer):
    with pytest.raises(ValueError, match=r"a string or a rank-1 batch of strings"):
        tokenizer(tf.constant([["a", "b"]]))
