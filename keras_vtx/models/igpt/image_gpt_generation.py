"""Sampling pixel ids from an autoregressive Image GPT, with or without a key/value cache."""

import numpy as np
from keras import ops

from keras_vtx import backend

# Logit given to filtered-out colours: finite, so XLA and softmax never see inf - inf.
_FILTERED = -1e30


def generate_pixel_ids(
    model,
    prefix_ids=None,
    num_images=None,
    temperature=1.0,
    top_k=None,
    top_p=None,
    seed=None,
    use_cache=True,
    greedy=False,
):
    """Samples whole images (as palette ids) from an autoregressive Image GPT.

    Pixels are drawn one at a time in raster order, each from the model's
    distribution given the previous ones (Chen et al. 2020, section 2.1); a
    given prefix (e.g. the top rows of an image) is kept and the rest is
    completed. With `use_cache=True` the prefix runs through the model once
    (filling a key/value cache in every block) and each later pixel costs one
    single-token step; with `use_cache=False` every step recomputes the whole
    sequence (the reference the cache is tested and benchmarked against).

    Each pixel is `argmax(logits / temperature + gumbel_noise)` over the colours
    that survive top-k / top-p filtering (the Gumbel-max trick: an exact draw
    from the softmax). The noise of pixel `i` depends only on `(seed, i)`, so
    the cached and uncached loops draw the same image for the same seed. Draws
    differ between backends (each uses its own stateless generator).

    The loop is compiled where the backend allows: `jax.jit` on JAX,
    `tf.function(jit_compile=True)` (XLA) on TensorFlow; PyTorch runs eagerly
    (under `torch.no_grad`). Compiled functions are kept on the model per
    (batch size, prefix length, use_cache), so later calls with the
    same shapes do not recompile (the sampling options and the seed are
    arguments of the compiled function); the weights are read at each call.

    Memory: the cache holds `2 * num_layers * batch * sequence_length *
    hidden_dim` values (iGPT-S at 32x32, batch 8: 0.8 GB in float32).

    Args:
        model: an `ImageGPT` with the autoregressive objective.
        prefix_ids: optional int array `(batch, P)` (or `(P,)`, shared by all
            `num_images`) of palette ids in `[0, palette_size)`, `P <=
            sequence_length`: the first `P` pixels of each image, kept.
        num_images: int, how many images to draw; defaults to the prefix's
            batch, or 1 without a prefix.
        temperature: float > 0, divides the logits (below 1: sharper).
        top_k: optional int >= 1, sample only among the `top_k` likeliest colours.
        top_p: optional float in (0, 1], nucleus sampling: only the smallest set
            of likeliest colours whose probability reaches `top_p` (always at
            least one).
        seed: optional int; the same seed gives the same images. None draws
            one from NumPy's global generator (`keras.utils.set_random_seed`).
        use_cache: bool, decode with the key/value cache.
        greedy: bool, take the likeliest colour at every step (no sampling).

    Returns:
        An int32 NumPy array `(batch, sequence_length)` of palette ids.

    Example:
    >>> from keras_vtx.models.igpt.image_gpt import ImageGPT
    >>> model = ImageGPT.from_preset("igpt_tiny_test")
    >>> ids = generate_pixel_ids(model, num_images=2, top_k=4, seed=1)
    >>> ids.shape, ids.dtype.name
    ((2, 64), 'int32')
    >>> half = generate_pixel_ids(model, prefix_ids=ids[:, :32], seed=2)
    >>> bool((half[:, :32] == ids[:, :32]).all())
    True
    """
    palette_size, length = _check_model(model)
    prefix = _check_prefix(prefix_ids, num_images, palette_size, length)
    top_k, top_p = _check_sampling(temperature, top_k, top_p, palette_size)
    if seed is None:
        seed = int(np.random.randint(0, 2**31 - 1))
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"`seed` must be an int or None; received {seed!r}.")
    batch, prefix_length = prefix.shape
    if prefix_length == length:
        return prefix.copy()
    ids = np.zeros((batch, length), "int32")
    ids[:, :prefix_length] = prefix
    _ensure_built(model)
    # Through __dict__: Keras would track (and try to save) a dict set as an attribute.
    functions = model.__dict__.setdefault("_pixel_sampling_functions", {})
    key = (batch, prefix_length, bool(use_cache))
    if key not in functions:
        functions[key] = backend.compile_loop(_build_loop(model, prefix_length, use_cache),
                                              _sampling_variables(model))
    # The options travel as tensors: changing them does not recompile.
    arguments = [
        ops.convert_to_tensor(ids),
        ops.convert_to_tensor(int(seed) % (2**31 - 1), dtype="int32"),
        ops.convert_to_tensor(float(temperature), dtype="float32"),
        ops.convert_to_tensor(top_k or palette_size, dtype="int32"),
        ops.convert_to_tensor(2.0 if top_p is None else top_p, dtype="float32"),
        ops.convert_to_tensor(1.0 if greedy else 0.0, dtype="float32"),
    ]
    out = functions[key](*arguments)
    return np.asarray(ops.convert_to_numpy(out)).astype("int32")


def cached_logits(model, pixel_ids, prefill_length=1):
    """Teacher-forced logits of `pixel_ids` computed through the key/value cache.

    The first `prefill_length` positions run as one prefill call, the others
    one token at a time, exactly as in `generate_pixel_ids`; the result equals
    the full forward pass `model(pixel_ids)` up to float rounding (a check of
    the cache, used by the tests).

    Args:
        model: an autoregressive `ImageGPT`.
        pixel_ids: int array `(batch, L)`, `1 <= L <= sequence_length`.
        prefill_length: int in `[1, L]`.

    Returns:
        float32 logits `(batch, L, palette_size)`; position `i` predicts pixel `i`.

    Example:
    >>> from keras_vtx.models.igpt.image_gpt import ImageGPT
    >>> model = ImageGPT.from_preset("igpt_tiny_test")
    >>> tuple(cached_logits(model, np.zeros((1, 5), "int32"), prefill_length=2).shape)
    (1, 5, 16)
    """
    palette_size, length = _check_model(model)
    ids = _check_prefix(pixel_ids, None, palette_size, length)
    batch, steps = ids.shape
    if not 1 <= prefill_length <= steps:
        raise ValueError(
            f"`prefill_length` must be in [1, {steps}] (the length of `pixel_ids`); "
            f"received {prefill_length}."
        )
    _ensure_built(model)
    tokens = _shift_right(ops.convert_to_tensor(ids), model.special_token_id)
    caches = [layer.initial_cache(batch, length) for layer in model.backbone.transformer_layers]
    logits, caches = _forward(model, tokens[:, :prefill_length], 0, caches, last_only=False)
    outputs = [logits]
    for i in range(prefill_length, steps):
        step, caches = _forward(model, tokens[:, i : i + 1], i, caches, last_only=False)
        outputs.append(step)
    return ops.concatenate(outputs, axis=1)


# --- validation ---------------------------------------------------------------------------


def _check_model(model):
    for name in ("backbone", "lm_head", "special_token_id", "palette_size"):
        if not hasattr(model, name):
            raise ValueError(
                f"`model` must be an ImageGPT (with `{name}`); received {type(model).__name__}."
            )
    objective = getattr(model, "objective", "autoregressive")
    if objective != "autoregressive" or not model.backbone.causal:
        raise ValueError(
            "Sampling needs the autoregressive objective (a causal backbone); received a "
            f"model with objective={objective!r}. A BERT-objective model predicts masked "
            "pixels and has no left-to-right distribution to sample from."
        )
    return int(model.palette_size), int(model.backbone.sequence_length)


def _check_prefix(prefix_ids, num_images, palette_size, length):
    if num_images is not None and (
        not isinstance(num_images, (int, np.integer)) or isinstance(num_images, bool)
        or num_images < 1
    ):
        raise ValueError(f"`num_images` must be a positive int; received {num_images!r}.")
    if prefix_ids is None:
        return np.zeros((num_images or 1, 0), "int32")
    prefix = np.asarray(ops.convert_to_numpy(prefix_ids))
    if prefix.dtype.kind not in "iu":
        raise ValueError(
            f"`prefix_ids` must hold integer palette ids; received dtype {prefix.dtype}."
        )
    if prefix.ndim == 1:
        prefix = np.broadcast_to(prefix[None], (num_images or 1, prefix.shape[0]))
    if prefix.ndim != 2:
        raise ValueError(
            f"`prefix_ids` must have shape (batch, P) or (P,); received {prefix.shape}."
        )
    if num_images is not None and prefix.shape[0] != num_images:
        raise ValueError(
            f"`num_images` ({num_images}) differs from the batch of `prefix_ids` "
            f"({prefix.shape[0]})."
        )
    if prefix.shape[1] > length:
        raise ValueError(
            f"`prefix_ids` has length {prefix.shape[1]}, longer than the model's context "
            f"(`sequence_length` = {length})."
        )
    if prefix.size and (prefix.min() < 0 or prefix.max() >= palette_size):
        raise ValueError(
            f"`prefix_ids` must hold palette ids in [0, {palette_size}); received values in "
            f"[{prefix.min()}, {prefix.max()}]."
        )
    return np.ascontiguousarray(prefix, dtype="int32")


def _check_sampling(temperature, top_k, top_p, palette_size):
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.number)) \
            or not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"`temperature` must be a finite number > 0; received {temperature!r}.")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise ValueError(f"`top_k` must be an int >= 1 or None; received {top_k!r}.")
        top_k = int(top_k) if top_k < palette_size else None  # keeping all = no filter
    if top_p is not None:
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float, np.number)) \
                or not 0 < top_p <= 1:
            raise ValueError(f"`top_p` must be a number in (0, 1] or None; received {top_p!r}.")
        top_p = float(top_p) if top_p < 1 else None
    return top_k, top_p


def _ensure_built(model):
    if not model.lm_head.built:
        model.lm_head.build((None, None, model.backbone.hidden_dim))


# --- the model, step by step ---------------------------------------------------------------


def _shift_right(ids, special_token_id):
    """`[SOS, ids[:, :-1]]`: the input whose position `i` predicts pixel `i`."""
    sos = ops.full((ops.shape(ids)[0], 1), special_token_id, dtype=ids.dtype)
    return ops.concatenate([sos, ids[:, :-1]], axis=1)


def _forward(model, tokens, start, caches, last_only=True):
    """Tokens at positions `start ...` through the cached blocks; float32 logits."""
    backbone = model.backbone
    positions = ops.arange(tokens.shape[1], dtype="int32")[None] + ops.cast(start, "int32")
    x = backbone.token_embedding(tokens) + backbone.position_embedding(positions)
    new_caches = []
    for layer, cache in zip(backbone.transformer_layers, caches):
        x, cache = layer(x, is_causal=True, cache=cache, cache_update_index=start)
        new_caches.append(cache)
    if last_only:
        x = x[:, -1:]
    return _head(model, backbone.final_norm(x)), new_caches


def _full_forward_at(model, ids, index):
    """Uncached: the whole shifted sequence through the backbone, logits at `index`."""
    hidden = model.backbone(_shift_right(ids, model.special_token_id))
    batch, _, width = ops.shape(hidden)
    return _head(model, ops.slice(hidden, [0, index, 0], [batch, 1, width]))


def _head(model, hidden):
    # As ImageGPT.call: the head may run in float32 under mixed precision.
    return ops.cast(model.lm_head(ops.cast(hidden, model.lm_head.compute_dtype)), "float32")


def _select(logits, seed, step, temperature, top_k, top_p, greedy):
    """One colour per image from float32 logits `(batch, palette_size)`.

    The options are tensors (no recompilation when they change): `top_k` an
    int in [1, palette_size], `top_p` a float (> 1 keeps everything), `greedy`
    1.0 or 0.0 (the weight of the Gumbel noise is `1 - greedy`).
    """
    logits = logits / temperature
    descending = ops.flip(ops.sort(logits, axis=-1), axis=-1)
    kth = ops.take(descending, top_k - 1, axis=1)[:, None]
    ranks = ops.arange(ops.shape(logits)[-1], dtype="int32")[None]
    descending = ops.where(ranks < top_k, descending, _FILTERED)
    probs = ops.softmax(descending, axis=-1)
    # Nucleus: keep a colour while the likelier ones (within the top k) sum to
    # less than top_p: the smallest set reaching top_p, never empty.
    keep = (ops.cumsum(probs, axis=-1) - probs) < top_p
    nucleus = ops.min(ops.where(keep, descending, -_FILTERED), axis=-1, keepdims=True)
    logits = ops.where(logits < ops.maximum(kth, nucleus), _FILTERED, logits)
    uniform = backend.stateless_uniform(ops.shape(logits), seed, step, logits)
    gumbel = -ops.log(-ops.log(uniform))
    return ops.cast(ops.argmax(logits + gumbel * (1.0 - greedy), axis=-1), "int32")


def _build_loop(model, prefix_length, use_cache):
    """The sampling loop `(ids (B, L) int32, seed, *options) -> ids`, static shapes."""
    length = model.backbone.sequence_length

    def write(ids, index, token):
        return ops.slice_update(ids, [0, index], ops.expand_dims(token, 1))

    def uncached(ids, seed, *options):
        def body(i, ids):
            logits = _full_forward_at(model, ids, i)[:, 0]
            return write(ids, i, _select(logits, seed, i, *options))

        return ops.fori_loop(prefix_length, length, body, ids)

    def cached(ids, seed, *options):
        batch = ops.shape(ids)[0]
        layers = model.backbone.transformer_layers
        caches = [layer.initial_cache(batch, length) for layer in layers]
        # Prefill: SOS and the prefix in one call; its last position predicts
        # the first free pixel.
        tokens = _shift_right(ids, model.special_token_id)[:, : prefix_length + 1]
        logits, caches = _forward(model, tokens, 0, caches)
        ids = write(ids, prefix_length, _select(logits[:, 0], seed, prefix_length, *options))

        def body(i, state):
            ids, caches = state
            previous = ops.slice(ids, [0, i - 1], [batch, 1])
            logits, caches = _forward(model, previous, i, caches)
            return write(ids, i, _select(logits[:, 0], seed, i, *options)), caches

        ids, _ = ops.fori_loop(prefix_length + 1, length, body, (ids, caches))
        return ids

    return cached if use_cache else uncached


def _sampling_variables(model):
    return list(model.backbone.variables) + list(model.lm_head.variables)
