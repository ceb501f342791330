"""CLIP's tokenizer: lower-cased byte-level BPE with start/end tokens, in-graph.

Needs TensorFlow and tensorflow-text (it runs inside `tf.data` on every backend), so
`keras_vtx.models.clip` imports this module lazily.
"""

import gzip
import hashlib
import html
import json
import numbers
import os
import threading

import keras
import keras_hub
import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

from keras_vtx.models import presets

ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
MERGES_FILE = os.path.join(ASSETS_DIR, "clip_merges.txt.gz")
CHAR_MAP_FILE = os.path.join(ASSETS_DIR, "clip_char_map.json")
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"

# OpenAI CLIP's pre-tokenizer (clip/simple_tokenizer.py): contractions, runs of
# letters, single digits, runs of anything else. RE2 and Python's `regex` both take
# the leftmost alternative that matches, so the pieces are the same.
WORD_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+"
# Every character Python's `str.split()` splits on (the reference collapses runs of
# them to one space); RE2's `\s` is ASCII-only, so they are listed.
WHITESPACE = (
    r"[\t\n\x{b}\x{c}\r\x{1c}-\x{1f} \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}"
    r"\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]+"
)
# HTML entities decoded in-graph (the reference runs ftfy's entity fix, then
# `html.unescape` twice): (name, replacement, ";" optional in `html.unescape`).
# Entities that yield "&" go last so that one pass decodes one level, as
# `html.unescape` does.
_ENTITIES = (
    ("(?:lt|LT)", "<", True),
    ("(?:gt|GT)", ">", True),
    ("(?:quot|QUOT)", '"', True),
    ("apos", "'", False),
    ("nbsp", "\xa0", True),
    ("#0*39", "'", True),
    ("#[xX]0*27", "'", True),
    ("#0*34", '"', True),
    ("#[xX]0*22", '"', True),
    ("(?:amp|AMP)", "&", True),
    ("#0*38", "&", True),
    ("#[xX]0*26", "&", True),
)


@keras.saving.register_keras_serializable(package="keras_vtx")
class CLIPTokenizer(keras_hub.models.CLIPTokenizer):
    """CLIP's tokenizer: lower-cased byte-level BPE, 49,408 tokens, usable in `tf.data`.

    Gives the ids of OpenAI's reference tokenizer (`SimpleTokenizer` with ftfy):
    `<|startoftext|>` (49406), the BPE ids of the cleaned, lower-cased text,
    `<|endoftext|>` (49407), truncated so that the end token is kept, then padded
    with `pad_token_id` (0). The BPE merging is keras-hub's (tensorflow-text); the
    cleaning and word splitting are CLIP's, so ids match the reference exactly,
    including digits (one token each), accents, emoji and non-Latin scripts.

    Text cleaning. The reference runs `ftfy.fix_text`, `html.unescape` twice,
    collapses whitespace and lower-cases. In-graph (`tf.data`, `tf.function`,
    tensors) this tokenizer applies what can be done exactly without Python:
    ftfy's single-character repairs (curly quotes, Latin ligatures, full-width
    forms, control and C1 characters, from a table generated with ftfy), NFC,
    the common HTML entities (`&amp; &lt; &gt; &quot; &#39; &nbsp;`...), Unicode
    whitespace collapsing and Unicode lower-casing. Not done in-graph: ftfy's
    mojibake repair (`"sÃ³"` -> `"só"`), terminal escape removal and the other
    HTML entities; eager calls on Python strings run the exact reference cleaning
    (ftfy + `html.unescape`) first when ftfy is installed. Special-token strings
    inside the text are tokenized as ordinary text.

    Args:
        sequence_length: int >= 2, the length of the output (CLIP's context, 77).
        vocabulary: `None` (CLIP's standard vocabulary, shipped with the package),
            a dict `token -> id`, or the path to a `vocab.json`.
        merges: `None` (the standard merges), a list of `"a b"` merge rules, or the
            path to a merges file (`merges.txt`, or gzip'ed as open_clip ships it).
            With `vocabulary=None` and custom merges, the vocabulary is built from
            the merges as CLIP's is (bytes, bytes + `</w>`, one token per merge,
            then the two special tokens).
        **kwargs: passed to `keras.layers.Layer` (`name`, `dtype`).

    Call arguments:
        inputs: a Python `str`, a list of `str`, or a `tf.string` tensor of rank 0
            or 1.

    Returns:
        int32 token ids of shape `(sequence_length,)` for one string, or
        `(batch, sequence_length)`; backend tensors when called eagerly, `tf`
        tensors inside `tf.data`/`tf.function`.

    Example:
    >>> tokenizer = CLIPTokenizer(sequence_length=8)
    >>> np.asarray(tokenizer("A photo of a cat."))
    array([49406,   320,  1125,   539,   320,  2368,   269, 49407], dtype=int32)
    >>> tuple(np.asarray(tokenizer(["a dog", ""])).shape)
    (2, 8)
    >>> tokenizer.detokenize(tokenizer("A photo of a cat."))
    'a photo of a cat .'
    """

    def __init__(self, sequence_length=77, vocabulary=None, merges=None, **kwargs):
        if isinstance(sequence_length, bool) or not isinstance(sequence_length, numbers.Integral):
            raise TypeError(
                "`sequence_length` must be an int >= 2 (room for the start and end "
                f"tokens); received {sequence_length!r}."
            )
        if sequence_length < 2:
            raise ValueError(
                "`sequence_length` must be >= 2 (room for the start and end tokens); "
                f"received {sequence_length}."
            )
        sequence_length = int(sequence_length)
        vocab, merge_rules = _load_vocabulary_and_merges(vocabulary, merges)
        # Always the TF path: keras-hub's Python path pre-tokenizes differently.
        kwargs["_allow_python_workflow"] = False
        kwargs.pop("pad_with_end_token", None)
        super().__init__(
            vocabulary=vocab, merges=merge_rules, sequence_length=sequence_length, **kwargs
        )
        self._vocabulary_arg = vocabulary
        self._merges_arg = merges
        with open(CHAR_MAP_FILE, encoding="utf-8") as f:
            char_map = json.load(f)
        self._char_map = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(list(char_map.keys())), tf.constant(list(char_map.values()))
            ),
            default_value="\uffff",  # a non-character: "not in the table"
        )

    @property
    def vocabulary_size(self):
        """The number of token ids (49,408 for CLIP's vocabulary)."""
        return len(self.vocabulary)

    def call(self, inputs):
        # Python strings are cleaned here, before keras-hub would turn them into tensors.
        inputs, cleaned = _python_clean(inputs)
        with tf.device("cpu"):
            token_ids = self._tokenize(inputs, cleaned)
        return _to_backend(token_ids)

    def tokenize(self, inputs):
        """Like calling the tokenizer, but always returns `tf` tensors."""
        inputs, cleaned = _python_clean(inputs)
        return self._tokenize(inputs, cleaned)

    def _tokenize(self, inputs, cleaned):
        # Two traced functions, called eagerly (op-by-op BPE is slow) and from graphs
        # alike, so that a tf.data map or tf.function that tokenizes adds calls instead
        # of tracing the BPE graph again (measured: a dataset built in 0.2 s instead of
        # 2.5 s): the BPE, shared by every tokenizer with the same vocabulary and merges
        # (`_shared_bpe`), then this tokenizer's start/end tokens and padding. They are
        # not nested in one function: instantiating the BPE graph inside a new function
        # costs 1-2 s on its first eager call.
        inputs = tf.convert_to_tensor(inputs)
        _check_string_tensor(inputs)
        if "_frame_function" not in self.__dict__:
            self.__dict__["_frame_function"] = tf.function(
                lambda ids: _frame(self, ids),
                input_signature=[tf.RaggedTensorSpec([None, None], tf.int32, 1, tf.int64)],
            )
        ids = _shared_bpe(self, cleaned)(tf.reshape(inputs, [-1]),
                                         tf.constant(self.sequence_length - 2, tf.int32))
        token_ids = self.__dict__["_frame_function"](ids)
        return token_ids[0] if inputs.shape.rank == 0 else token_ids

    def set_vocabulary_and_merges(self, vocabulary, merges):
        super().set_vocabulary_and_merges(vocabulary, merges)
        # Other tables: another BPE function, and the special tokens' ids are retraced.
        self.__dict__.pop("_tables_digest", None)
        self.__dict__.pop("_frame_function", None)

    def _tables_key(self):
        """What identifies the BPE tables: the vocabulary and merges, by content."""
        if "_tables_digest" not in self.__dict__:
            digest = hashlib.sha256()
            # (Ids in the vocabulary's order: equal tables from the same files or dicts.)
            digest.update("\0".join(f"{t}\1{i}" for t, i in self.vocabulary.items()).encode())
            digest.update("\0".join(self.merges).encode())
            self.__dict__["_tables_digest"] = digest.hexdigest()
        return self.__dict__["_tables_digest"]

    def detokenize(self, inputs):
        """Returns the text of token ids, without the special tokens and padding.

        Args:
            inputs: int token ids, `(sequence_length,)` or `(batch, sequence_length)`.

        Returns:
            A `str` (a list of `str` for a batch) eagerly, string tensors in-graph.
        """
        with tf.device("cpu"):
            text = _detokenize(self, inputs)
        return _to_python(text)

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """Builds the tokenizer of a CLIP preset.

        Args:
            preset: a registered CLIP preset name (for example
                `"clip_vit_base_patch32"`; every CLIP preset uses the standard
                vocabulary), a directory written by transformers'
                `CLIPTokenizer.save_pretrained()` (`vocab.json` + `merges.txt`, or
                the `tokenizer.json` that transformers 5 writes), or
                `"hf://org/name"` (downloaded with `huggingface_hub`).
            **kwargs: other constructor arguments (`sequence_length`).

        Example:
        >>> CLIPTokenizer.from_preset("clip_vit_base_patch32").vocabulary_size
        49408
        """
        if not isinstance(preset, (str, os.PathLike)):
            raise TypeError(
                "`preset` must be a CLIP preset name, a directory with vocab.json and "
                f"merges.txt, or an 'hf://' address; received {type(preset).__name__}."
            )
        preset = os.fspath(preset)
        if preset.startswith(presets.HF_PREFIX):
            # Only the tokenizer's files, not the weights.
            preset = presets.download_from_hub(
                preset[len(presets.HF_PREFIX):],
                allow_patterns=["vocab.json", "merges.txt", "tokenizer.json"])
        if os.path.isdir(preset):
            vocab_path = os.path.join(preset, "vocab.json")
            merges_path = os.path.join(preset, "merges.txt")
            if os.path.exists(vocab_path) and os.path.exists(merges_path):
                return cls(vocabulary=vocab_path, merges=merges_path, **kwargs)
            tokenizer_json = os.path.join(preset, "tokenizer.json")
            if os.path.exists(tokenizer_json):  # transformers >= 5 writes only this
                vocabulary, merge_rules = _read_tokenizer_json(tokenizer_json)
                return cls(vocabulary=vocabulary, merges=merge_rules, **kwargs)
            if os.path.exists(os.path.join(preset, presets.PRESET_FILE)):
                return cls(**kwargs)  # keras_vtx presets use the standard vocabulary
            raise ValueError(
                f"Directory {preset!r} has neither vocab.json and merges.txt nor "
                "tokenizer.json (written by transformers' `CLIPTokenizer.save_pretrained`)."
            )
        if preset.startswith("clip_"):
            return cls(**kwargs)
        entry = presets.get_preset(preset)  # raises a helpful error for unknown names
        if not entry["class_name"].startswith("CLIP"):
            raise ValueError(
                f"`preset` must be a CLIP preset; {preset!r} builds a "
                f"{entry['class_name']}."
            )
        return cls(**kwargs)

    def get_config(self):
        config = keras.layers.Layer.get_config(self)
        config.update(
            {
                "sequence_length": self.sequence_length,
                "vocabulary": self._vocabulary_arg,
                "merges": self._merges_arg,
            }
        )
        return config


def _load_vocabulary_and_merges(vocabulary, merges):
    if vocabulary is not None and merges is None:
        raise ValueError(
            "`merges` must be given with `vocabulary` (a list of merge rules or the path "
            "to merges.txt); received merges=None."
        )
    merges = _read_merges(MERGES_FILE if merges is None else merges)
    if vocabulary is None:
        return _vocabulary_from_merges(merges), merges
    if isinstance(vocabulary, (str, os.PathLike)):
        with open(vocabulary, encoding="utf-8") as f:
            vocabulary = json.load(f)
    if not isinstance(vocabulary, dict):
        raise TypeError(
            "`vocabulary` must be None, a dict token -> id or the path to vocab.json; "
            f"received {type(vocabulary).__name__}."
        )
    for token in (START_TOKEN, END_TOKEN):
        if token not in vocabulary:
            raise ValueError(f"`vocabulary` must contain the special token {token!r}.")
    return dict(vocabulary), merges


def _read_tokenizer_json(path):
    with open(path, encoding="utf-8") as f:
        model = json.load(f).get("model", {})
    if model.get("type") != "BPE" or "vocab" not in model or "merges" not in model:
        raise ValueError(f"{path!r} does not hold a BPE tokenizer (vocab and merges).")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return model["vocab"], merges


def _read_merges(merges):
    if isinstance(merges, (str, os.PathLike)):
        path = os.fspath(merges)
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            merges = f.read().split("\n")
    elif isinstance(merges, (list, tuple)):
        merges = list(merges)
    else:
        raise TypeError(
            "`merges` must be None, a list of 'a b' merge rules or the path to a merges "
            f"file; received {type(merges).__name__}."
        )
    rules = [m.strip() for m in merges if m.strip() and not m.lstrip().startswith("#version")]
    bad = [m for m in rules if not isinstance(m, str) or len(m.split(" ")) != 2]
    if bad:
        raise ValueError(f"`merges` must hold 'a b' rules; received {bad[0]!r}.")
    return rules


def _vocabulary_from_merges(merges):
    """CLIP's vocabulary: bytes, bytes + '</w>', one token per merge, the special tokens."""
    _, byte_symbols = _bytes_to_unicode()
    tokens = byte_symbols + [s + "</w>" for s in byte_symbols]
    tokens += ["".join(m.split(" ")) for m in merges] + [START_TOKEN, END_TOKEN]
    return {token: i for i, token in enumerate(tokens)}


def _bytes_to_unicode():
    # GPT-2's reversible byte -> printable character table (the order fixes the ids).
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    byte_values, chars = printable[:], printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            byte_values.append(b)
            chars.append(256 + extra)
            extra += 1
    return byte_values, [chr(c) for c in chars]


def _python_clean(inputs):
    """Validates `inputs`; Python strings get the reference's exact cleaning if ftfy is here.

    Returns:
        `(inputs, cleaned)`: `cleaned` says whether ftfy and `html.unescape` ran.
    """
    if isinstance(inputs, (tf.Tensor, tf.RaggedTensor)) or keras.ops.is_tensor(inputs):
        if not isinstance(inputs, tf.Tensor) or inputs.dtype != tf.string:
            raise TypeError(
                "`inputs` must be a string, a list of strings or a tf.string tensor; "
                f"received a {type(inputs).__name__} of dtype {inputs.dtype}."
            )
        return inputs, False
    # Bytes that are not UTF-8 become U+FFFD, as in the tf.string path.
    if isinstance(inputs, bytes):
        inputs = inputs.decode("utf-8", errors="replace")
    if hasattr(inputs, "tolist") and not isinstance(inputs, str):  # numpy arrays
        inputs = inputs.tolist()
        inputs = inputs.decode("utf-8", errors="replace") if isinstance(inputs, bytes) \
            else inputs
    if isinstance(inputs, (list, tuple)):
        inputs = [x.decode("utf-8", errors="replace") if isinstance(x, bytes) else x
                  for x in inputs]
        bad = [x for x in inputs if not isinstance(x, str)]
        if bad:
            raise TypeError(
                "`inputs` must be a string, a list of strings or a tf.string tensor; "
                f"received a list holding {type(bad[0]).__name__} ({bad[0]!r})."
            )
        if not inputs:  # an empty batch: (0, sequence_length)
            return tf.zeros([0], tf.string), True
    elif not isinstance(inputs, str):
        raise TypeError(
            "`inputs` must be a string, a list of strings or a tf.string tensor; "
            f"received {type(inputs).__name__}."
        )
    try:
        import ftfy
    except ImportError:
        return inputs, False

    def clean(text):
        return html.unescape(html.unescape(ftfy.fix_text(text)))

    if isinstance(inputs, str):
        return clean(inputs), True
    return [clean(x) for x in inputs], True


def _clean_graph(self, text, cleaned):
    """The reference's cleaning in TF ops; `cleaned`: ftfy and html already ran in Python."""
    if not cleaned:
        has_angle_bracket = tf.strings.regex_full_match(text, "(?s).*<.*")
        chars = tf.strings.unicode_split(text, "UTF-8", errors="replace")
        mapped = self._char_map.lookup(chars.flat_values)
        chars = chars.with_flat_values(
            tf.where(mapped == "\uffff", chars.flat_values, mapped)
        )
        text = tf.strings.reduce_join(chars, axis=-1)
        text = tf_text.normalize_utf8(text, "NFC")
        # ftfy decodes entities that end in ";" (until nothing changes) unless the text
        # holds a "<"; two levels are decoded here.
        decoded = text
        for _ in range(2):
            decoded = _unescape_once(decoded, semicolon_required=True)
        text = tf.where(has_angle_bracket, text, decoded)
        for _ in range(2):  # html.unescape(html.unescape(text))
            text = _unescape_once(text, semicolon_required=False)
    text = tf.strings.strip(tf.strings.regex_replace(text, WHITESPACE, " "))
    return tf.strings.lower(text, encoding="utf-8")


def _unescape_once(text, semicolon_required):
    for name, replacement, optional in _ENTITIES:
        text = tf.strings.regex_replace(text, f"&{name};", replacement)
        if optional and not semicolon_required and name.startswith("#"):
            # Without ";" a numeric reference ends at the first non-digit.
            tail = "[^0-9a-fA-F]" if "x" in name else "[^0-9]"
            text = tf.strings.regex_replace(text, f"&{name}({tail}|$)", replacement + r"\1")
        elif optional and not semicolon_required:
            text = tf.strings.regex_replace(text, f"&{name}", replacement)
    return text


def _check_string_tensor(inputs):
    if inputs.dtype != tf.string or inputs.shape.rank not in (0, 1):
        raise ValueError(
            "`inputs` must be a string or a rank-1 batch of strings; received dtype "
            f"{inputs.dtype.name} and shape {inputs.shape}."
        )


# Traced BPE functions by (vocabulary and merges, cleaning mode). Tracing keras-hub's BPE
# graph takes seconds: tokenizers for other context lengths, the default tokenizers of
# several pipelines and the tokenizer of each reloaded model all reuse the first one's
# function, tables and warm merge cache (the tables of equal vocabularies are equal).
_SHARED_BPE = {}
_SHARED_BPE_LOCK = threading.Lock()


def _shared_bpe(tokenizer, cleaned):
    key = (tokenizer._tables_key(), cleaned)
    with _SHARED_BPE_LOCK:
        if key not in _SHARED_BPE:
            _SHARED_BPE[key] = tf.function(
                lambda text, kept: _bpe_graph(tokenizer, text, cleaned, kept),
                input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([], tf.int32)],
                autograph=False,
            )
        return _SHARED_BPE[key]


# Bounding the BPE by what is kept. Merging a word of n bytes takes about n^2 steps
# (keras-hub merges one pair per step, over the whole word), and only the first `kept`
# BPE tokens of a text survive truncation: a 1 MB word once took minutes for 75 tokens.
# Every word gives at least one token, so the kept tokens come from the first `kept`
# words, and they are read in windows: the first of `4 * kept + _MARGIN_BYTES` bytes of
# the words' concatenation (all that ordinary text needs), then of `_WINDOW_BYTES`.
# Merges decide locally: tokens that end `_MARGIN_BYTES` or more before a window's cut
# come out as from the whole word (the tests compare long words of every kind with the
# reference), so they are final, and the next window starts after the last of them.
# That restart is exact: no merge ever crosses a final token boundary, so the tokens
# after it are those of the word's rest merged on its own. The work is then about
# linear in the bytes the kept tokens span (a run of one emoji, 32-byte tokens: 2,400).
_MARGIN_BYTES = 64
_FIRST_WINDOW_BYTES_PER_TOKEN = 4
_WINDOW_BYTES = 256


def _bpe_graph(self, text, cleaned, kept):
    """Ragged int32 BPE ids of a batch of strings (no start, end or padding): the first
    `kept` of each string, the reference's."""
    self._maybe_initialized_tf()
    longest = max(len(token.removesuffix("</w>")) for token in self.vocabulary)
    text = _clean_graph(self, text, cleaned)
    # Cleaning leaves at most one space between words: either this prefix holds the
    # first `kept` words whole, or it holds more word bytes than the kept tokens can
    # span (`kept * longest`), with a margin to spare (splitting a million words is
    # what took time).
    text = tf.strings.unicode_transcode(
        tf.strings.substr(text, 0, kept * (longest + 1) + 2 * _MARGIN_BYTES, unit="BYTE"),
        input_encoding="UTF-8", output_encoding="UTF-8", errors="ignore")
    words = tf_text.regex_split(text, WHITESPACE + "|" + WORD_PATTERN, WORD_PATTERN)
    kept64 = tf.cast(kept, tf.int64)
    words = tf.ragged.boolean_mask(words, tf.ragged.range(words.row_lengths()) < kept64)

    count = words.nrows()
    flat_words = words.flat_values
    flat_sizes = tf.strings.length(flat_words, unit="BYTE")
    row_of_word = words.value_rowids()
    index_in_row = tf.ragged.range(words.row_lengths()).flat_values
    words_in_row = words.row_lengths()
    # Windows large enough to always finish a token a margin before their end.
    first_window = tf.maximum(kept * _FIRST_WINDOW_BYTES_PER_TOKEN + _MARGIN_BYTES,
                              longest + 2 * _MARGIN_BYTES)
    later_windows = max(_WINDOW_BYTES, longest + 2 * _MARGIN_BYTES)

    def merge(pieces):
        """The BPE tokens of each piece (a ragged `(pieces, tokens)`), cached per piece."""
        cached = self.cache.lookup(pieces)

        def merge_unseen():
            # keras-hub's CLIP BPE merge (adds "</w>" to the last symbol).
            self._bpe_merge_and_update_cache_tf(tf.boolean_mask(pieces, cached == ""))
            return self.cache.lookup(pieces)

        unseen = tf.logical_and(cached == "", tf.strings.length(pieces) > 0)
        merged = tf.cond(tf.reduce_any(unseen), merge_unseen, lambda: cached)
        return tf.strings.split(merged, sep=" ")

    def step(round_, at_word, at_byte, taken, committed):
        window = tf.where(round_ == 0, first_window, later_windows)
        # Each unfinished text from its cursor (word, byte), cut to one window.
        here = tf.gather(at_word, row_of_word)
        offset = tf.where(index_in_row == here, tf.gather(at_byte, row_of_word), 0)
        rest = tf.where(index_in_row >= here, flat_sizes - offset, 0)
        rest = tf.where(tf.gather(taken >= kept, row_of_word), 0, rest)
        before = tf.math.cumsum(tf.RaggedTensor.from_value_rowids(
            rest, row_of_word, count, validate=False), axis=1, exclusive=True).flat_values
        room = tf.clip_by_value(window - before, 0, rest)
        tokens = merge(tf.strings.substr(flat_words, offset, room, unit="BYTE"))
        # Flat per-token arrays (ragged broadcasting would add shape checks to the graph).
        flat = tokens.flat_values
        piece = tokens.value_rowids()
        size = (tf.strings.length(flat, unit="UTF8_CHAR")  # one symbol per byte
                - tf.where(tf.strings.regex_full_match(flat, ".*</w>"), 4, 0))
        running = tf.math.cumsum(size)
        end = running - tf.gather(tf.gather(tf.concat([[0], running], 0),
                                            tokens.row_splits[:-1]), piece)
        whole = tf.logical_and(tf.equal(room, rest), room > 0)  # read to the word's end
        limit = tf.where(whole, room, room - _MARGIN_BYTES)
        final = tf.logical_and(end <= tf.gather(limit, piece), size > 0)
        final = tf.logical_and(final, tf.gather(room > 0, piece))
        used = tf.math.unsorted_segment_sum(tf.where(final, size, 0), piece,
                                            tf.shape(flat_words, tf.int64)[0])
        # The cursor moves to the first word not read to its end, past its final tokens.
        unfinished = tf.logical_and(index_in_row >= here, tf.logical_not(whole))
        next_word = tf.minimum(tf.math.unsorted_segment_min(
            tf.where(unfinished, index_in_row, tf.int64.max), row_of_word, count),
            words_in_row)
        stays = tf.logical_and(unfinished, index_in_row == tf.gather(next_word, row_of_word))
        next_byte = tf.math.unsorted_segment_sum(tf.where(stays, offset + used, 0),
                                                 row_of_word, count)
        # Append each text's final tokens, up to `kept` of them.
        text_of = tf.gather(row_of_word, piece)
        is_final = tf.cast(final, tf.int32)
        new_count = tf.math.unsorted_segment_sum(is_final, text_of, count)
        first_of_text = tf.math.cumsum(new_count, exclusive=True)
        position = (tf.gather(taken, text_of) + tf.math.cumsum(is_final) - 1
                    - tf.gather(first_of_text, text_of))
        fits = tf.logical_and(final, position < kept)
        committed = tf.tensor_scatter_nd_update(
            committed,
            tf.stack([tf.boolean_mask(text_of, fits),
                      tf.cast(tf.boolean_mask(position, fits), tf.int64)], 1),
            tf.boolean_mask(flat, fits))
        taken = tf.minimum(taken + new_count, kept)
        taken = tf.where(next_word >= words_in_row, kept, taken)  # no words left
        return round_ + 1, next_word, next_byte, taken, committed

    start = (tf.constant(0), tf.zeros([count], tf.int64), tf.zeros([count], tf.int32),
             tf.zeros([count], tf.int32), tf.fill(tf.stack([count, kept64]), ""))
    *_, committed = tf.while_loop(lambda round_, at_word, at_byte, taken, committed:
                                  tf.reduce_any(taken < kept), step, start,
                                  maximum_iterations=kept + 1)
    tokens = tf.RaggedTensor.from_tensor(committed, padding="")
    return tokens.with_flat_values(
        tf.cast(self.token_to_id_map.lookup(tokens.flat_values), "int32"))


def _frame(self, ids):
    """Start token, the BPE ids truncated, end token, padding: `(batch, sequence_length)`."""
    # As the reference: keep the first sequence_length - 2 BPE tokens, so the end
    # token always survives truncation.
    ids = ids[:, : self.sequence_length - 2]
    batch = tf.shape(ids.row_splits)[0] - 1
    start = tf.fill([batch, 1], tf.constant(self.start_token_id, "int32"))
    end = tf.fill([batch, 1], tf.constant(self.end_token_id, "int32"))
    ids = tf.concat([start, ids, end], axis=1)
    return ids.to_tensor(
        default_value=tf.constant(self.pad_token_id, "int32"),
        shape=[None, self.sequence_length],
    )


def _detokenize(self, inputs):
    self._maybe_initialized_tf()
    if isinstance(inputs, (tf.Tensor, tf.RaggedTensor)):
        ids = tf.cast(inputs, "int32")
    else:
        if keras.ops.is_tensor(inputs):
            inputs = keras.ops.convert_to_numpy(inputs)
        ids = tf.constant(np.asarray(inputs), dtype="int32")
    unbatched = ids.shape.rank == 1
    if unbatched:
        ids = ids[tf.newaxis]
    if isinstance(ids, tf.Tensor):
        ids = tf.RaggedTensor.from_tensor(ids)
    # Everything from the first end token on is the end and padding.
    before_end = tf.math.cumsum(tf.cast(ids == self.end_token_id, "int32"), axis=1) == 0
    ids = tf.ragged.boolean_mask(ids, before_end & (ids != self.start_token_id))
    tokens = self.id_to_token_map.lookup(ids)
    # "</w>" ends a word: it becomes a space once the byte symbols are bytes again.
    word_ends = tf.strings.regex_full_match(tokens, ".*</w>")
    symbols = tf.strings.unicode_split(tf.strings.regex_replace(tokens, "</w>$", ""), "UTF-8")
    symbols = symbols.with_flat_values(self.unicode2byte.lookup(symbols.flat_values))
    pieces = tf.strings.reduce_join(symbols, axis=-1)
    pieces = tf.strings.join([pieces, tf.where(word_ends, " ", "")])
    text = tf.strings.strip(tf.strings.reduce_join(pieces, axis=-1))
    return text[0] if unbatched else text


def _to_backend(token_ids):
    # Eager calls return backend tensors; in tf.data / tf.function they stay `tf`.
    if tf.executing_eagerly():
        return keras.ops.convert_to_tensor(token_ids.numpy())
    return token_ids


def _to_python(text):
    if tf.executing_eagerly():
        text = text.numpy()
        if isinstance(text, bytes):
            return text.decode("utf-8", errors="replace")
        return [t.decode("utf-8", errors="replace") for t in text.tolist()]
    return text
