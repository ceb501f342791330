"""CLIPTokenizer against OpenAI's reference tokenizer (open_clip's `SimpleTokenizer`)."""

import importlib.util
import json
import os

import keras
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_text")
pytest.importorskip("keras_hub")

from keras_vtx.models.clip.clip_tokenizer import (  # noqa: E402
    END_TOKEN,
    MERGES_FILE,
    START_TOKEN,
    CLIPTokenizer,
)
from tests.test_case import to_numpy  # noqa: E402

# punctuation, digits, accents (composed and decomposed), emoji (with modifiers and
# joiners), non-Latin scripts, contractions, upper case, whitespace of every kind, HTML
# entities, ftfy's character repairs, control characters, very long text, empty text.
STRINGS = [
    "A photo of a cat.",
    "",
    "   ",
    "Hello, World!!! It's 2024-01-01; 3.14159 + 42 = ?? (50%) #tag @user ~/path_x",
    "Café naïve résumé Über straße ÉCOLE Ångström",
    "e\u0301 decomposed accents: a\u0308 o\u0302",
    "😀🎉 emoji 👍🏽 family 👨‍👩‍👧 flags 🇫🇷 ❤️",
    "日本語のテキスト、中文文本。한국어 텍스트",
    "Привет, мир! ΟΔΟΣ Ελληνικά İSTANBUL",
    "العربية עברית हिन्दी ไทย ქართული",
    "“curly quotes” ‘single’ ﬁne ﬂuﬃest ＦＵＬＬ　ｗｉｄｔｈ ｶﾀｶﾅ",
    "tom &amp; jerry &lt;3 &quot;hi&quot; &#39;x&#39; &amp;amp; &amp;lt; &nbsp;x",
    "a<b &amp; c &gt; d",
    "  lots   of\t\nwhite\r\nspace \u00a0\u2003\u3000 here  \u2028 \u0085 end ",
    "I'M YOU'RE WE'LL THEY'D ISN'T can't",
    "ctrl\x07chars\x0bremoved\x1fhere\x7f",
    "x" * 500,
    "word " * 200,
    "0123456789 1,000,000 ½ ² ٣",
]


def _load_reference():
    pytest.importorskip("ftfy")
    pytest.importorskip("regex")
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        pytest.skip("open_clip_torch is not installed (pip install --no-deps open_clip_torch)")
    # Loaded by path: importing open_clip itself needs torchvision.
    path = os.path.join(list(spec.submodule_search_locations)[0], "tokenizer.py")
    module_spec = importlib.util.spec_from_file_location("_open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.SimpleTokenizer()


@pytest.fixture(scope="module")
def reference():
    return _load_reference()


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer()


def _reference_ids(reference, strings, length=77):
    return np.asarray(reference(strings, context_length=length).numpy(), "int32")


@pytest.mark.backend_independent
def test_vocabulary_matches_reference(tokenizer, reference):
    expected = dict(reference.encoder)
    expected[START_TOKEN] = expected.pop("<start_of_text>")
    expected[END_TOKEN] = expected.pop("<end_of_text>")
    assert dict(tokenizer.vocabulary) == expected
    assert tokenizer.vocabulary_size == 49408
    assert (tokenizer.start_token_id, tokenizer.end_token_id, tokenizer.pad_token_id) == (
        49406, 49407, 0)
    assert tokenizer.sequence_length == 77


def test_eager_ids_match_reference(tokenizer, reference):
    ids = to_numpy(tokenizer(STRINGS))
    assert ids.dtype == np.int32 and ids.shape == (len(STRINGS), 77)
    expected = _reference_ids(reference, STRINGS)
    for text, got, want in zip(STRINGS, ids, expected):
        np.testing.assert_array_equal(got, want, err_msg=repr(text))


@pytest.mark.backend_independent
def test_in_graph_ids_match_reference(tokenizer, reference):
    """tf.data.Dataset.map, batched: no Python, no ftfy, same ids."""
    dataset = tf.data.Dataset.from_tensor_slices(STRINGS).batch(4).map(tokenizer)
    batches = list(dataset)
    assert all(isinstance(b, tf.Tensor) and b.dtype == tf.int32 for b in batches)
    assert batches[0].shape.as_list() == [4, 77]
    ids = np.concatenate([b.numpy() for b in batches])
    expected = _reference_ids(reference, STRINGS)
    for text, got, want in zip(STRINGS, ids, expected):
        np.testing.assert_array_equal(got, want, err_msg=repr(text))


@pytest.mark.backend_independent
def test_the_bpe_graph_is_traced_once_per_vocabulary(reference):
    # Eager calls, tf.data maps (batched and unbatched), tf.functions and other tokenizers
    # with the same vocabulary all call one traced BPE function instead of tracing the
    # BPE graph again (seconds each).
    from keras_vtx.models.clip import clip_tokenizer

    tokenizer = CLIPTokenizer(sequence_length=12)
    expected = _reference_ids(reference, STRINGS[:4], length=12)
    datasets = [tf.data.Dataset.from_tensor_slices(STRINGS[:4]).batch(2).map(tokenizer),
                tf.data.Dataset.from_tensor_slices(STRINGS[:4]).map(tokenizer)]
    for dataset in datasets:
        np.testing.assert_array_equal(np.concatenate(
            [np.reshape(b.numpy(), (-1, 12)) for b in dataset]), expected)
    bpe = clip_tokenizer._shared_bpe(tokenizer, False)  # tensors: no Python cleaning
    assert bpe.experimental_get_tracing_count() == 1
    in_function = tf.function(lambda x: tokenizer.tokenize(x))(tf.constant(STRINGS[:4]))
    np.testing.assert_array_equal(in_function.numpy(), expected)
    np.testing.assert_array_equal(to_numpy(tokenizer(tf.constant(STRINGS[:4]))), expected)
    # Another context length frames the same BPE ids differently.
    longer = CLIPTokenizer(sequence_length=20)
    np.testing.assert_array_equal(to_numpy(longer(tf.constant(STRINGS[:4]))),
                                  _reference_ids(reference, STRINGS[:4], length=20))
    assert clip_tokenizer._shared_bpe(longer, False) is bpe
    assert bpe.experimental_get_tracing_count() == 1
    # Other merges are other tables: their own function, their own ids.
    merges = clip_tokenizer._read_merges(clip_tokenizer.MERGES_FILE)[:1000]
    fewer = CLIPTokenizer(sequence_length=12, merges=merges)
    assert clip_tokenizer._shared_bpe(fewer, False) is not bpe
    assert not np.array_equal(to_numpy(fewer(tf.constant(STRINGS[:4]))), expected)
    assert clip_tokenizer._shared_bpe(CLIPTokenizer(merges=merges), False) is (
        clip_tokenizer._shared_bpe(fewer, False))
    # New tables set on a tokenizer (as loading saved assets does) select their function.
    fewer.set_vocabulary_and_merges(dict(tokenizer.vocabulary), list(tokenizer.merges))
    assert clip_tokenizer._shared_bpe(fewer, False) is bpe
    np.testing.assert_array_equal(to_numpy(fewer(tf.constant(STRINGS[:4]))), expected)


@pytest.mark.backend_independent
def test_unbatched_in_graph_and_tf_tensor_inputs(tokenizer, reference):
    dataset = tf.data.Dataset.from_tensor_slices(STRINGS[:4]).map(tokenizer)
    element_spec = dataset.element_spec
    assert element_spec.shape.as_list() == [77] and element_spec.dtype == tf.int32
    expected = _reference_ids(reference, STRINGS[:4])
    np.testing.assert_array_equal(np.stack([x.numpy() for x in dataset]), expected)
    # Eager tf tensors, scalar and batched.
    np.testing.assert_array_equal(to_numpy(tokenizer(tf.constant(STRINGS[0]))), expected[0])
    np.testing.assert_array_equal(to_numpy(tokenizer(tf.constant(STRINGS[:4]))), expected)
    np.testing.assert_array_equal(to_numpy(tokenizer(np.array(STRINGS[:4]))), expected)


@pytest.mark.backend_independent
def test_mojibake_repair_is_eager_only(tokenizer, reference):
    """ftfy's mojibake repair has no in-graph equivalent (documented)."""
    text = "sÃ³lo dÃ­as"
    expected = _reference_ids(reference, [text])[0]
    np.testing.assert_array_equal(to_numpy(tokenizer(text)), expected)
    in_graph = tf.function(lambda x: tokenizer(x))(tf.constant(text)).numpy()
    assert not np.array_equal(in_graph, expected)


@pytest.mark.backend_independent
def test_truncation_keeps_end_token(tokenizer, reference):
    text = "a very long caption " * 50
    ids = to_numpy(tokenizer(text))
    assert ids[0] == 49406 and ids[76] == 49407 and 0 not in ids
    np.testing.assert_array_equal(ids, _reference_ids(reference, [text])[0])
    short = CLIPTokenizer(sequence_length=5)
    np.testing.assert_array_equal(
        to_numpy(short([text, "", "cat"])), _reference_ids(reference, [text, "", "cat"], 5))
    np.testing.assert_array_equal(to_numpy(CLIPTokenizer(sequence_length=2)(text)),
                                  [49406, 49407])


@pytest.mark.backend_independent
def test_padding(tokenizer):
    ids = to_numpy(tokenizer(["cat", ""]))
    np.testing.assert_array_equal(ids[0, :3], [49406, 2368, 49407])
    np.testing.assert_array_equal(ids[1, :2], [49406, 49407])
    assert not ids[0, 3:].any() and not ids[1, 2:].any()


@pytest.mark.backend_independent
def test_detokenize(tokenizer):
    assert tokenizer.detokenize(tokenizer("A Photo of 2 cats!")) == "a photo of 2 cats !"
    assert tokenizer.detokenize(tokenizer(["Héllo wörld 😀", ""])) == ["héllo wörld 😀", ""]
    dataset = tf.data.Dataset.from_tensor_slices(["a dog"]).map(tokenizer)
    assert [t.numpy() for t in dataset.map(tokenizer.detokenize)] == [b"a dog"]


def _write_vocab_and_merges(tokenizer, path):
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(dict(tokenizer.vocabulary)), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(tokenizer.merges) + "\n",
                                     encoding="utf-8")
    return path


TEXTS = ["A photo of a cat.", "naïve café", "emoji 😀", "12 apples, isn't it?"]


@pytest.mark.backend_independent
def test_from_vocab_json_and_merges_txt_dir(tokenizer, reference, tmp_path):
    """The layout of the Hugging Face Hub's openai/clip-vit-* repositories."""
    directory = _write_vocab_and_merges(tokenizer, tmp_path / "hub")
    loaded = CLIPTokenizer.from_preset(str(directory), sequence_length=16)
    assert loaded.sequence_length == 16 and loaded.vocabulary_size == 49408
    np.testing.assert_array_equal(to_numpy(loaded(TEXTS)), _reference_ids(reference, TEXTS, 16))


@pytest.mark.backend_independent
def test_from_transformers_save_pretrained_dir(tokenizer, reference, tmp_path):
    transformers = pytest.importorskip("transformers")
    source = _write_vocab_and_merges(tokenizer, tmp_path / "source")
    hf = transformers.CLIPTokenizer(vocab=str(source / "vocab.json"),
                                    merges=str(source / "merges.txt"))
    saved = tmp_path / "saved"
    hf.save_pretrained(str(saved))
    loaded = CLIPTokenizer.from_preset(str(saved), sequence_length=16)
    assert loaded.vocabulary_size == 49408
    ids = to_numpy(loaded(TEXTS))
    np.testing.assert_array_equal(ids, _reference_ids(reference, TEXTS, 16))
    # transformers' own ids (it pads with the end token) agree up to the end token.
    hf_ids = hf(TEXTS[0], padding="max_length", max_length=16)["input_ids"]
    end = list(ids[0]).index(49407)
    np.testing.assert_array_equal(ids[0, : end + 1], hf_ids[: end + 1])


@pytest.mark.backend_independent
def test_from_preset_names(tokenizer):
    loaded = CLIPTokenizer.from_preset("clip_vit_base_patch32")
    np.testing.assert_array_equal(to_numpy(loaded("a cat")), to_numpy(tokenizer("a cat")))
    with pytest.raises(ValueError, match="Unknown preset"):
        CLIPTokenizer.from_preset("not_a_preset_name")
    with pytest.raises(ValueError, match="CLIP preset"):
        CLIPTokenizer.from_preset("vit_base_patch16_224")
    with pytest.raises(TypeError, match="preset"):
        CLIPTokenizer.from_preset(3)


@pytest.mark.backend_independent
def test_from_preset_bad_directory(tmp_path):
    with pytest.raises(ValueError, match="vocab.json"):
        CLIPTokenizer.from_preset(str(tmp_path))


@pytest.mark.backend_independent
def test_custom_merges_build_the_vocabulary(tokenizer):
    custom = CLIPTokenizer(merges=MERGES_FILE, sequence_length=8)
    assert dict(custom.vocabulary) == dict(tokenizer.vocabulary)
    small = CLIPTokenizer(merges=["c a", "ca t</w>"], sequence_length=6)
    assert small.vocabulary_size == 512 + 2 + 2
    assert (small.start_token_id, small.vocabulary["cat</w>"]) == (514, 513)
    np.testing.assert_array_equal(to_numpy(small("cat")), [514, 513, 515, 0, 0, 0])


@pytest.mark.backend_independent
def test_bad_inputs(tokenizer):
    with pytest.raises(TypeError, match="inputs"):
        tokenizer(3)
    with pytest.raises(TypeError, match="inputs"):
        tokenizer(["ok", 3])
    with pytest.raises(TypeError, match="inputs"):
        tokenizer(tf.constant([1, 2]))
    with pytest.raises(ValueError, match="inputs"):
        tokenizer(tf.constant([["a"], ["b"]]))
    with pytest.raises(ValueError, match="sequence_length"):
        CLIPTokenizer(sequence_length=1)
    with pytest.raises(TypeError, match="sequence_length"):
        CLIPTokenizer(sequence_length=7.0)
    with pytest.raises(ValueError, match="merges"):
        CLIPTokenizer(vocabulary={"a": 0})
    with pytest.raises(ValueError, match="endoftext"):
        CLIPTokenizer(vocabulary={"a": 0, "b": 1, "ab": 2, START_TOKEN: 3}, merges=["a b"])


@pytest.mark.backend_independent
def test_get_config_round_trip(tokenizer):
    custom = CLIPTokenizer(sequence_length=12, merges=MERGES_FILE, name="text_tokenizer")
    config = custom.get_config()
    assert config["sequence_length"] == 12 and config["merges"] == MERGES_FILE
    assert config["vocabulary"] is None
    assert CLIPTokenizer.from_config(config).get_config() == config
    serialized = keras.saving.serialize_keras_object(custom)
    assert serialized["registered_name"] == "keras_vtx>CLIPTokenizer"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert isinstance(restored, CLIPTokenizer) and restored.get_config() == config
    np.testing.assert_array_equal(to_numpy(restored("a cat")),
                                  to_numpy(tokenizer("a cat"))[:12])
