import types

import keras
import numpy as np
import pytest

from keras_vtx.models.clip import prompt_templates
from keras_vtx.models.clip.zero_shot_classifier import (
    ZeroShotClassifier,
    build_class_embeddings,
)
from tests.test_case import assert_keras_save_load, np_softmax, to_numpy

CLASS_NAMES = ("cat", "dog", "pickup truck", "bird")
TEMPLATES = ("a photo of a {}.", "a blurry {} picture", "{}")
LOG_SCALE_INIT = float(np.log(1 / 0.07))  # CLIP's initial temperature 0.07
LOG_SCALE_MAX = float(np.log(100.0))


@keras.saving.register_keras_serializable(package="keras_vtx_tests")
class FakeCLIP(keras.Model):
    """A CLIP-like model whose embeddings are chosen by hand.

    A text embeds to the normalised sum of its tokens' rows of `word_vectors`
    (row 0, the padding, is zero); an image embeds to the normalised mean of its
    pixels, so an image filled with a vector embeds to that vector's direction.
    """

    def __init__(self, vocabulary_size, embedding_dim, logit_scale_init=LOG_SCALE_INIT,
                 logit_scale_max=LOG_SCALE_MAX, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.embedding_dim = embedding_dim
        self.logit_scale_init = float(logit_scale_init)
        self.logit_scale_max = float(logit_scale_max)
        self.word_vectors = self.add_weight(
            shape=(vocabulary_size, embedding_dim), initializer="zeros", name="word_vectors"
        )
        self.logit_scale = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(self.logit_scale_init),
            autocast=False, name="logit_scale",
        )
        self.built = True

    def encode_text(self, token_ids):
        vectors = keras.ops.take(self.word_vectors, keras.ops.convert_to_tensor(token_ids), 0)
        return keras.ops.normalize(keras.ops.cast(keras.ops.sum(vectors, 1), "float32"), -1)

    def encode_images(self, images):
        pooled = keras.ops.mean(keras.ops.cast(images, "float32"), axis=(1, 2))
        return keras.ops.normalize(pooled, -1)

    def call(self, images):
        return self.encode_images(images)

    def get_config(self):
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size,
                "embedding_dim": self.embedding_dim, "logit_scale_init": self.logit_scale_init,
                "logit_scale_max": self.logit_scale_max}


class FakeTokenizer:
    """Maps each word (trailing periods dropped) to an id; pads with 0."""

    def __init__(self, texts, sequence_length=8):
        words = sorted({w for t in texts for w in self.words(t)})
        self.ids = {w: i + 1 for i, w in enumerate(words)}
        self.sequence_length = sequence_length
        self.calls = 0

    @staticmethod
    def words(text):
        return text.replace(".", " ").split()

    def __call__(self, texts):
        self.calls += 1
        out = np.zeros((len(texts), self.sequence_length), "int32")
        for i, text in enumerate(texts):
            ids = [self.ids[w] for w in self.words(text)]
            out[i, :len(ids)] = ids
        return out


def _setup(class_noise=0.0, template_noise=0.4, extra_dims=3, seed=0, class_names=CLASS_NAMES,
           templates=TEMPLATES):
    """Class words embed near the one-hot of their class; template words add noise.

    With `class_noise=0` the template words only move the extra dimensions, so
    an image equal to the one-hot of class c is closest to class c by construction.
    """
    rng = np.random.default_rng(seed)
    texts = [t.replace("{}", c) for c in class_names for t in templates]
    tokenizer = FakeTokenizer(texts)
    dim = len(class_names) + extra_dims
    table = np.zeros((len(tokenizer.ids) + 1, dim), "float32")
    class_words = {}
    for c, name in enumerate(class_names):
        for w in FakeTokenizer.words(name):
            class_words[w] = c
    for word, i in tokenizer.ids.items():
        if word in class_words:
            table[i, class_words[word]] = 1.0
            table[i] += class_noise * rng.standard_normal(dim)
        else:
            table[i, len(class_names):] = template_noise * rng.standard_normal(extra_dims)
            table[i, :len(class_names)] += class_noise * rng.standard_normal(len(class_names))
    clip = FakeCLIP(len(table), dim)
    clip.word_vectors.assign(table)
    return clip, tokenizer, table


def _np_class_embeddings(table, tokenizer, class_names, templates):
    """The CLIP paper's prompt ensembling, transcribed: mean of unit vectors, renormalised."""
    rows = []
    for name in class_names:
        units = []
        for template in templates:
            ids = tokenizer([template.replace("{}", name)])[0]
            v = table[ids].astype("float64").sum(0)
            units.append(v / np.linalg.norm(v))
        mean = np.mean(units, axis=0)
        rows.append(mean / np.linalg.norm(mean))
    return np.stack(rows)


def _images(vectors, size=2):
    """Images whose every pixel is `vector` (so they embed to its direction)."""
    vectors = np.asarray(vectors, "float32")
    return np.tile(vectors[:, None, None, :], (1, size, size, 1))


def test_template_ensembling_matches_numpy():
    clip, tokenizer, table = _setup(class_noise=0.3)
    model = ZeroShotClassifier(clip, CLASS_NAMES, TEMPLATES, tokenizer=tokenizer)
    expected = _np_class_embeddings(table, tokenizer, CLASS_NAMES, TEMPLATES)
    np.testing.assert_allclose(to_numpy(model.class_embeddings), expected, atol=1e-6)
    # The ensemble is not just the first template, nor an unnormalised mean.
    single = _np_class_embeddings(table, tokenizer, CLASS_NAMES, TEMPLATES[:1])
    assert np.abs(expected - single).max() > 1e-2
    # Prompts in small batches (one class per text-encoder call) give the same.
    tokenizer.calls = 0
    chunked = build_class_embeddings(clip, CLASS_NAMES, TEMPLATES, tokenizer, batch_size=2)
    assert tokenizer.calls == len(CLASS_NAMES)
    np.testing.assert_allclose(chunked, expected, atol=1e-6)

    class UnnormalisedText:
        # Scaled text embeddings must not weigh some templates more than others.
        def encode_text(self, token_ids):
            scale = 1.0 + np.arange(len(token_ids))[:, None] % 3
            return scale * to_numpy(clip.encode_text(token_ids))

    scaled = build_class_embeddings(UnnormalisedText(), CLASS_NAMES, TEMPLATES, tokenizer)
    np.testing.assert_allclose(scaled, expected, atol=1e-6)


def test_known_answer_and_probabilities():
    clip, tokenizer, table = _setup()
    model = ZeroShotClassifier(clip, CLASS_NAMES, TEMPLATES, tokenizer=tokenizer)
    dim = table.shape[1]
    labels = np.array([2, 0, 3, 1, 2])
    images = _images(np.eye(dim)[labels])
    probs = to_numpy(model.predict(images, verbose=0))
    np.testing.assert_array_equal(probs.argmax(-1), labels)
    class_embeddings = _np_class_embeddings(table, tokenizer, CLASS_NAMES, TEMPLATES)
    cosines = np.eye(dim)[labels] @ class_embeddings.T
    np.testing.assert_allclose(probs, np_softmax(cosines / 0.07), atol=1e-5)
    np.testing.assert_allclose(to_numpy(model(images)), probs, atol=1e-6)


def test_predict_top_k_order_and_probabilities():
    clip, tokenizer, table = _setup()
    model = ZeroShotClassifier(clip, CLASS_NAMES, TEMPLATES, tokenizer=tokenizer)
    # The images lean 3:2:1 towards classes (1, 3, 0) and (2, 0, 3).
    vectors = np.zeros((2, table.shape[1]), "float32")
    vectors[0, [1, 3, 0]] = [3.0, 2.0, 1.0]
    vectors[1, [2, 0, 3]] = [3.0, 2.0, 1.0]
    labels, probs = model.predict_top_k(_images(vectors), k=3)
    assert labels.shape == (2, 3) and probs.shape == (2, 3)
    assert labels.tolist() == [["dog", "bird", "cat"], ["pickup truck", "cat", "bird"]]
    full = to_numpy(model.predict(_images(vectors), verbose=0))
    np.testing.assert_allclose(probs, full[[[0], [1]], [[1, 3, 0], [2, 0, 3]]], atol=1e-6)
    assert np.all(np.diff(probs, axis=1) < 0)
    labels, probs = model.predict_top_k(_images(vectors), k=len(CLASS_NAMES))
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_predict_top_k_ties_go_to_the_lower_class_index():
    # Like "missile" and "sunglasses" in CLIP's ImageNet names: equal class embeddings.
    clip, _, _ = _setup()
    embeddings = np.eye(4, 7)[[1, 0, 1, 2]]
    model = ZeroShotClassifier(clip, ["b", "a", "b2", "c"], class_embeddings=embeddings)
    labels, probs = model.predict_top_k(_images(np.eye(7)[[1, 0]]), k=3)
    assert labels.tolist() == [["b", "b2", "a"], ["a", "b", "b2"]]
    assert probs[0, 0] == probs[0, 1] and probs[1, 1] == probs[1, 2]


def test_logit_scale_is_read_live_and_clamped():
    clip, tokenizer, table = _setup()
    model = ZeroShotClassifier(clip, CLASS_NAMES, TEMPLATES, tokenizer=tokenizer,
                               activation=None)
    images = _images(np.eye(table.shape[1])[[0, 1]])
    cosines = np.eye(table.shape[1])[[0, 1]] @ to_numpy(model.class_embeddings).T
    np.testing.assert_allclose(to_numpy(model(images)), cosines / 0.07, rtol=1e-5)
    clip.logit_scale.assign(np.log(1000.0))  # above logit_scale_max = ln(100)
    np.testing.assert_allclose(to_numpy(model(images)), cosines * 100.0, rtol=1e-5)


def test_evaluate_accuracy_arrays_datasets_and_keras_evaluate():
    clip, tokenizer, table = _setup(class_noise=0.5, seed=3)
    model = ZeroShotClassifier(clip, CLASS_NAMES, TEMPLATES, tokenizer=tokenizer)
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((40, table.shape[1])).astype("float32")
    labels = rng.integers(0, len(CLASS_NAMES), 40)
    images = _images(vectors)
    probs = to_numpy(model.predict(images, verbose=0))
    order = np.argsort(-probs, axis=1, kind="stable")
    expected = {
        "top1_accuracy": float(np.mean(order[:, 0] == labels)),
        "top2_accuracy": float(np.mean((order[:, :2] == labels[:, None]).any(1))),
    }
    assert 0.0 < expected["top1_accuracy"] < expected["top2_accuracy"] < 1.0
    assert model.evaluate_accuracy(images, labels, ks=(1, 2), batch_size=16) == expected
    batches = [{"images": images[i:i + 16], "labels": labels[i:i + 16]} for i in range(0, 40, 16)]
    assert model.evaluate_accuracy(batches, ks=(1, 2)) == expected
    tf = pytest.importorskip("tensorflow")
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    assert model.evaluate_accuracy(dataset, ks=(1, 2)) == expected
    # Default ks: top-1 and top-5 lowered to the 4 classes (always right).
    assert model.evaluate_accuracy(images, labels)["top4_accuracy"] == 1.0
    model.compile()
    results = model.evaluate(images, labels, batch_size=16, verbose=0, return_dict=True)
    np.testing.assert_allclose(results["accuracy"], expected["top1_accuracy"], atol=1e-6)


def test_save_and_load(tmp_path):
    clip, tokenizer, table = _setup(class_noise=0.3)
    model = ZeroShotClassifier(clip, CLASS_NAMES, TEMPLATES, tokenizer=tokenizer)
    images = _images(np.random.default_rng(0).standard_normal((3, table.shape[1])))
    loaded = assert_keras_save_load(model, images, tmp_path, atol=1e-6)
    assert loaded.class_names == CLASS_NAMES and loaded.templates == TEMPLATES
    np.testing.assert_array_equal(to_numpy(loaded.class_embeddings),
                                  to_numpy(model.class_embeddings))


def test_float32_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    clip, tokenizer, table = _setup()
    model = ZeroShotClassifier(clip, CLASS_NAMES, TEMPLATES, tokenizer=tokenizer)
    probs = model(_images(np.eye(table.shape[1])[:2]))
    assert keras.backend.standardize_dtype(probs.dtype) == "float32"
    np.testing.assert_allclose(to_numpy(probs).sum(-1), 1.0, atol=1e-5)


def test_precomputed_class_embeddings_and_named_sets():
    clip, _, _ = _setup(extra_dims=4)
    embeddings = np.eye(6, 7)
    model = ZeroShotClassifier(clip, "shapes", class_embeddings=embeddings)
    assert model.class_names == prompt_templates.SHAPES_CLASS_NAMES and model.num_classes == 6
    labels, _ = model.predict_top_k(_images(np.eye(7)[[4]]), k=1)
    assert labels.tolist() == [["ring"]]


def test_bad_inputs():
    clip, tokenizer, _ = _setup()
    with pytest.raises(ValueError, match="class_names"):
        ZeroShotClassifier(clip, [], TEMPLATES, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="class_names"):
        ZeroShotClassifier(clip, "cat", TEMPLATES, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="class_names"):
        ZeroShotClassifier(clip, ["cat", ""], TEMPLATES, tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"'\{\}' exactly once.*'a photo of a cat'"):
        ZeroShotClassifier(clip, CLASS_NAMES, ["a photo of a cat"], tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"exactly once"):
        ZeroShotClassifier(clip, CLASS_NAMES, ["{} and {}"], tokenizer=tokenizer)
    with pytest.raises(ValueError, match="templates.*empty"):
        ZeroShotClassifier(clip, CLASS_NAMES, [], tokenizer=tokenizer)
    with pytest.raises(ValueError, match="shipped set"):
        ZeroShotClassifier(clip, CLASS_NAMES, "no-such-set", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="activation"):
        ZeroShotClassifier(clip, CLASS_NAMES, TEMPLATES, tokenizer=tokenizer, activation="relu")
    with pytest.raises(TypeError, match="encode_images"):
        ZeroShotClassifier(keras.layers.Dense(2), CLASS_NAMES, TEMPLATES, tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"class_embeddings.*received \(3, 4\)"):
        ZeroShotClassifier(clip, CLASS_NAMES, class_embeddings=np.zeros((4, 3)).T)
    model = ZeroShotClassifier(clip, CLASS_NAMES, TEMPLATES, tokenizer=tokenizer)
    images = _images(np.eye(7)[:2])
    for k in (0, 5, 2.0, True):
        with pytest.raises(ValueError, match=r"`k`.*between 1 and the number of classes \(4\)"):
            model.predict_top_k(images, k=k)
    with pytest.raises(ValueError, match="ks"):
        model.evaluate_accuracy(images, np.array([0, 1]), ks=(1, 7))
    with pytest.raises(ValueError, match="labels"):
        model.evaluate_accuracy(images, np.array([0, 1, 2]))


def test_shipped_template_sets():
    assert prompt_templates.list_template_sets() == [
        "cifar10", "cifar100", "imagenet", "imagenet_7", "shapes", "simple"]
    sizes = {"imagenet": 80, "imagenet_7": 7, "cifar10": 18, "cifar100": 18, "simple": 1}
    for name, size in sizes.items():
        templates = prompt_templates.get_templates(name)
        assert len(templates) == size == len(set(templates))
    assert set(prompt_templates.IMAGENET_7_TEMPLATES) <= set(prompt_templates.IMAGENET_TEMPLATES)
    assert prompt_templates.get_templates("simple") == ("a photo of a {}.",)
    names = {k: len(v) for k, v in prompt_templates.CLASS_NAMES.items()}
    assert names == {"imagenet": 1000, "cifar10": 10, "cifar100": 100, "shapes": 6}
    imagenet = prompt_templates.get_class_names("imagenet")
    assert (imagenet[0], imagenet[207], imagenet[999]) == (
        "tench", "Golden Retriever", "toilet paper")
    with pytest.raises(ValueError, match="available"):
        prompt_templates.get_class_names("mnist")


def test_shapes_templates_follow_the_shapes_data():
    pytest.importorskip("tensorflow")  # keras_vtx.data needs it
    from keras_vtx.data import shapes

    assert prompt_templates.SHAPES_CLASS_NAMES == shapes.SHAPE_CLASSES
    assert prompt_templates._SHAPES_COLORS == shapes.COLOR_NAMES
    assert prompt_templates._SHAPES_SIZES == tuple(word for _, word in shapes.SIZE_WORDS)
    captions = shapes.generate_shapes(200, seed=0)["captions"]
    # Every template, filled with a caption's shape, is a prefix-compatible phrase of
    # the caption's words: "a small red circle" for "a small red circle on the left".
    vocabulary = {w for c in captions for w in c.split()}
    for template in prompt_templates.get_templates("shapes"):
        assert set(template.replace("{}", "circle").split()) <= vocabulary | {"circle"}


@pytest.mark.slow  # eager JAX runs a transformer op by op: about 40 s on 2 loaded CPU cores
def test_with_a_tiny_clip_model(tmp_path):
    clip_module = pytest.importorskip("keras_vtx.models.clip.clip")
    text_module = pytest.importorskip("keras_vtx.models.clip.clip_text_encoder")
    from keras_vtx.models.vit import ViTBackbone

    image_encoder = ViTBackbone(image_size=16, patch_size=8, num_layers=1, hidden_dim=16,
                                num_heads=2, mlp_dim=32, pre_norm=True)
    text_encoder = text_module.CLIPTextEncoder(vocabulary_size=100, context_length=8,
                                               num_layers=1, hidden_dim=16, num_heads=2,
                                               mlp_dim=32, end_token_id=99)
    clip = clip_module.CLIP(image_encoder, text_encoder, projection_dim=8)
    words = FakeTokenizer([t.replace("{}", c) for c in CLASS_NAMES for t in TEMPLATES])

    def tokenize(texts):
        ids = words(texts)[:, :6]
        out = np.zeros((len(texts), 8), "int32")
        for i, row in enumerate(ids):
            row = row[row > 0]
            out[i, :len(row) + 2] = [98, *row, 99]
        return out

    model = ZeroShotClassifier(clip, CLASS_NAMES, TEMPLATES, tokenizer=tokenize)
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 16, 16, 3)).astype("float32")
    texts = [t.replace("{}", c) for c in CLASS_NAMES for t in TEMPLATES]
    text_embeddings = to_numpy(clip.encode_text(tokenize(texts))).astype("float64")
    mean = text_embeddings.reshape(len(CLASS_NAMES), len(TEMPLATES), -1).mean(1)
    mean /= np.linalg.norm(mean, axis=-1, keepdims=True)
    np.testing.assert_allclose(to_numpy(model.class_embeddings), mean, atol=1e-5)
    image_embeddings = to_numpy(clip.encode_images(pixels))
    scale = np.exp(to_numpy(clip.logit_scale))
    expected = np_softmax(scale * image_embeddings @ mean.T)
    np.testing.assert_allclose(to_numpy(model.predict(pixels, verbose=0)), expected, atol=1e-5)
    assert_keras_save_load(model, pixels, tmp_path, atol=1e-6)


@pytest.mark.slow  # loading the CLIP BPE vocabulary takes 10-20 s on a loaded CPU
def test_default_tokenizer_is_the_clip_tokenizer():
    tokenizer_module = pytest.importorskip("keras_vtx.models.clip.clip_tokenizer")
    clip = FakeCLIP(49408, 5)
    table = np.random.default_rng(0).standard_normal((49408, 5)).astype("float32")
    table[0] = 0.0
    clip.word_vectors.assign(table)
    model = ZeroShotClassifier(clip, ["cat", "dog"], ["a photo of a {}.", "a {}"])
    token_ids = to_numpy(tokenizer_module.CLIPTokenizer()(
        ["a photo of a cat.", "a cat", "a photo of a dog.", "a dog"]))
    assert token_ids.shape == (4, 77) and token_ids[0, 0] == 49406
    units = table[token_ids].astype("float64").sum(1)
    units /= np.linalg.norm(units, axis=1, keepdims=True)
    mean = units.reshape(2, 2, 5).mean(1)
    np.testing.assert_allclose(to_numpy(model.class_embeddings),
                               mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-6)

    # A CLIP with a shorter text context gets prompts tokenised to that length.
    seen = []
    encode_text = clip.encode_text
    clip.encode_text = lambda ids: seen.append(np.shape(ids)) or encode_text(ids)
    clip.text_encoder = types.SimpleNamespace(context_length=16)
    ZeroShotClassifier(clip, ["cat", "dog"], ["a photo of a {}."])
    assert seen == [(2, 16)]
