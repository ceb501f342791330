import keras
from keras import ops

from keras_vtx.layers.flat_dense import allow_direct_calls, apply_flat, call_sublayer, torch_kernel


@keras.saving.register_keras_serializable(package="keras_vtx")
@allow_direct_calls
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head scaled dot-product attention with separate query/key/value projections.

    The attention itself runs through `keras.ops.dot_product_attention`, so the
    backend's fused kernels (cuDNN / flash attention) are used where it has them;
    Keras' global switch applies as to Keras' own attention layers: by default
    (and after `keras.config.enable_flash_attention()`, which restores that
    default) the backend takes a fused kernel where the inputs allow one;
    `keras.config.disable_flash_attention()` keeps JAX on XLA's plain attention
    and leaves PyTorch's `scaled_dot_product_attention` to choose its kernel.
    On PyTorch, plain self-attention (no mask, positions, cache, returned scores
    or active dropout) called from a keras_vtx block runs as PyTorch ops on
    views of the heads (`_torch_self_attention`), saving host time.
    When attention probabilities are needed (attention dropout while training,
    or `return_attention_scores=True` for analysis) an explicit path computes
    the softmax in float32.

    Position encodings can be added to queries and keys only (not to values),
    as DETR does in every attention.

    For autoregressive decoding, self-attention can run with a key/value
    cache: a preallocated tensor `(batch, 2, max_length, num_heads, head_dim)`
    (see `initial_cache`) into which the keys and values of the new tokens are
    written at `cache_update_index`. The shapes stay static, so a compiled
    decoding step is traced once; positions not yet written are masked out.

    Args:
        num_heads: int, number of heads.
        key_dim: int or None, size of each head; defaults to `width // num_heads`.
        output_dim: int or None, width of the output; defaults to the query width.
        dropout: float, dropout on the attention probabilities.
        use_bias: bool, whether the projections have biases.
        kernel_initializer: initializer of the projection kernels.

    Call arguments:
        query: tensor `(batch, target_length, width)`.
        value: tensor `(batch, source_length, width)`; defaults to `query`.
        key: tensor like `value`; defaults to `value`.
        attention_mask: boolean tensor broadcastable to
            `(batch, num_heads, target_length, source_length)` (or
            `(batch, target_length, source_length)`); True means "attend".
        is_causal: bool, apply a causal mask.
        query_position: optional tensor added to `query` before the query projection.
        key_position: optional tensor added to `key` before the key projection.
        return_attention_scores: bool, also return the attention probabilities
            `(batch, num_heads, target_length, source_length)`.
        training: bool.
        cache: optional key/value cache `(batch, 2, max_length, num_heads,
            head_dim)` (self-attention only). The query's tokens sit at
            positions `cache_update_index + 0 .. target_length - 1`; with
            `is_causal=True` each sees the cache up to its own position,
            otherwise every position written so far. `source_length` is then
            `max_length`.
        cache_update_index: int or scalar int tensor, where the new keys and
            values are written; required with `cache`.

    Returns:
        A tensor `(batch, target_length, output_dim)`, then the attention
        probabilities when `return_attention_scores=True`, then the updated
        cache when `cache` is given.

    Example:
    >>> mha = MultiHeadAttention(num_heads=2)
    >>> tuple(mha(keras.ops.ones((1, 5, 8))).shape)
    (1, 5, 8)
    >>> cache = mha.initial_cache(batch_size=1, max_length=6)
    >>> out, cache = mha(keras.ops.ones((1, 2, 8)), is_causal=True,
    ...                  cache=cache, cache_update_index=0)
    >>> tuple(out.shape), tuple(cache.shape)
    ((1, 2, 8), (1, 2, 6, 2, 4))
    """

    def __init__(
        self,
        num_heads,
        key_dim=None,
        output_dim=None,
        dropout=0.0,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(num_heads) <= 0:
            raise ValueError(f"`num_heads` must be a positive int; received {num_heads}.")
        self.num_heads = int(num_heads)
        self.key_dim = key_dim
        self.output_dim = output_dim
        self.dropout = dropout
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def _dense(self, units, name):
        return keras.layers.Dense(
            units,
            use_bias=self.use_bias,
            kernel_initializer=keras.initializers.get(
                keras.initializers.serialize(self.kernel_initializer)
            ),
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, query_shape, value_shape=None, key_shape=None):
        value_shape = query_shape if value_shape is None else value_shape
        key_shape = value_shape if key_shape is None else key_shape
        width = query_shape[-1]
        if self.key_dim is None and width % self.num_heads:
            raise ValueError(
                f"The query width ({width}) must be divisible by `num_heads` "
                f"({self.num_heads}) when `key_dim` is not given."
            )
        self.head_dim = self.key_dim or width // self.num_heads
        inner = self.head_dim * self.num_heads
        self.query_dense = self._dense(inner, "query")
        self.key_dense = self._dense(inner, "key")
        self.value_dense = self._dense(inner, "value")
        self.output_dense = self._dense(self.output_dim or width, "output")
        self.query_dense.build(query_shape)
        self.key_dense.build(key_shape)
        self.value_dense.build(value_shape)
        self.output_dense.build(tuple(query_shape[:-1]) + (inner,))
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    def _split_heads(self, x):
        shape = ops.shape(x)
        return ops.reshape(x, (shape[0], shape[1], self.num_heads, self.head_dim))

    def call(
        self,
        query,
        value=None,
        key=None,
        attention_mask=None,
        is_causal=False,
        query_position=None,
        key_position=None,
        return_attention_scores=False,
        training=None,
        cache=None,
        cache_update_index=None,
    ):
        if cache is not None and (value is not None or key is not None):
            raise ValueError(
                "A key/value `cache` is for self-attention only; received a separate "
                "`value` or `key`."
            )
        value = query if value is None else value
        key = value if key is None else key
        if query_position is not None:
            query = query + ops.cast(query_position, query.dtype)
        if key_position is not None:
            key = key + ops.cast(key_position, key.dtype)
        q = self._split_heads(apply_flat(self.query_dense, query, self))
        k = self._split_heads(apply_flat(self.key_dense, key, self))
        v = self._split_heads(apply_flat(self.value_dense, value, self))
        mask = attention_mask
        if mask is not None:
            mask = ops.cast(mask, "bool")
            if len(mask.shape) == 3:
                mask = ops.expand_dims(mask, 1)
        if cache is not None:
            cache, k, v, visible = self._update_cache(cache, cache_update_index, k, v, is_causal)
            mask = visible if mask is None else ops.logical_and(mask, visible)
            is_causal = False
        if is_causal:
            t, s = q.shape[1], k.shape[1]
            if mask is not None or t is None or s is None or t != s:
                # Fold the causal mask into `mask`: the fused kernels either
                # reject a mask together with `is_causal` or align the causal
                # diagonal differently when the query is shorter than the keys
                # (a key/value cache). Query i sees keys up to s - t + i.
                t, s = ops.shape(q)[1], ops.shape(k)[1]
                causal = ops.tril(ops.ones((t, s), dtype="bool"), k=s - t)[None, None]
                mask = causal if mask is None else ops.logical_and(mask, causal)
                is_causal = False
        explicit = return_attention_scores or (training and self.dropout > 0)
        if explicit:
            out, probs = self._explicit_attention(q, k, v, mask, is_causal, training)
        else:
            out = ops.dot_product_attention(
                q, k, v, mask=mask, is_causal=is_causal,
                flash_attention=keras.config.is_flash_attention_enabled())
        shape = ops.shape(out)
        out = ops.reshape(out, (shape[0], shape[1], self.num_heads * self.head_dim))
        out = apply_flat(self.output_dense, out, self)
        outputs = (out,)
        if return_attention_scores:
            outputs += (probs,)
        if cache is not None:
            outputs += (cache,)
        return outputs[0] if len(outputs) == 1 else outputs

    def initial_cache(self, batch_size, max_length, dtype=None):
        """An empty key/value cache `(batch_size, 2, max_length, num_heads, head_dim)`.

        Args:
            batch_size: int.
            max_length: int, the longest sequence the cache will hold.
            dtype: defaults to the layer's compute dtype.

        Returns:
            A zero tensor.
        """
        if not self.built:
            raise ValueError(
                "`initial_cache` needs a built layer (the head size is set in `build`)."
            )
        shape = (batch_size, 2, max_length, self.num_heads, self.head_dim)
        return ops.zeros(shape, dtype=dtype or self.compute_dtype)

    def _update_cache(self, cache, index, k, v, is_causal):
        """Writes the new keys/values at `index`; returns the cache, keys, values, mask."""
        if index is None:
            raise ValueError(
                "`cache_update_index` is required with `cache`; received None."
            )
        if len(cache.shape) != 5 or cache.shape[1] != 2:
            raise ValueError(
                "`cache` must have shape (batch, 2, max_length, num_heads, head_dim); "
                f"received {tuple(cache.shape)}."
            )
        kv = ops.stack([ops.cast(k, cache.dtype), ops.cast(v, cache.dtype)], axis=1)
        cache = ops.slice_update(cache, [0, 0, index, 0, 0], kv)
        # Static shapes: attend over the whole cache and mask what is not
        # (yet) visible, so one compiled step serves every position.
        t, s = ops.shape(k)[1], ops.shape(cache)[2]
        query_pos = ops.arange(t, dtype="int32")[:, None] + ops.cast(index, "int32")
        key_pos = ops.arange(s, dtype="int32")[None, :]
        if is_causal:
            visible = key_pos <= query_pos
        else:
            visible = ops.broadcast_to(key_pos < ops.cast(index, "int32") + t, (t, s))
        k = ops.cast(cache[:, 0], self.compute_dtype)
        v = ops.cast(cache[:, 1], self.compute_dtype)
        return cache, k, v, visible[None, None]

    def _explicit_attention(self, q, k, v, mask, is_causal, training):
        # Logits and softmax in float32: the habit for mixed precision.
        scale = 1.0 / float(self.head_dim) ** 0.5
        logits = ops.einsum(
            "btnh,bsnh->bnts", ops.cast(q, "float32"), ops.cast(k, "float32")
        ) * scale
        if is_causal:
            t, s = ops.shape(q)[1], ops.shape(k)[1]
            causal = ops.tril(ops.ones((t, s), dtype="bool"), k=s - t)
            mask = causal[None, None] if mask is None else ops.logical_and(mask, causal)
        if mask is not None:
            logits = ops.where(mask, logits, ops.cast(-1e30, "float32"))
        probs = ops.softmax(logits, axis=-1)
        dropped = self.dropout_layer(ops.cast(probs, v.dtype), training=training)
        out = ops.einsum("bnts,bsnh->btnh", dropped, v)
        return out, probs

    def compute_output_shape(self, query_shape, value_shape=None, key_shape=None):
        return tuple(query_shape[:-1]) + (self.output_dim or query_shape[-1],)

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "key_dim": self.key_dim,
            "output_dim": self.output_dim,
            "dropout": self.dropout,
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }


@torch_kernel(MultiHeadAttention)
def _torch_self_attention(layer, x, training=None, is_causal=False, **kwargs):
    """`MultiHeadAttention.call` for plain self-attention, in PyTorch ops (PyTorch only).

    Self-attention without masks, positions, caches, returned scores or active
    dropout: the projections through `call_sublayer`, the heads as views and
    PyTorch's `scaled_dot_product_attention` on them with its own choice of
    kernel (Keras' PyTorch backend makes the same call, asking for the flash
    kernel where it applies, which PyTorch prefers anyway). Through `keras.ops`
    the head reshapes and `dot_product_attention` cost about 0.2 ms of Python per call
    (each op converts and checks its inputs, and the attention copies its
    transposed inputs to contiguous ones), a tenth of a small eager step.
    Anything else returns None: the layer's `call`.
    """
    import torch

    if (x.ndim != 3 or any(v is not None and v is not False for v in kwargs.values())
            or (training and layer.dropout > 0)):
        return None
    batch, length = x.shape[0], x.shape[1]

    def heads(dense):
        y = call_sublayer(dense, layer, x)
        return y.reshape(batch, length, layer.num_heads, layer.head_dim).transpose(1, 2)

    out = torch.nn.functional.scaled_dot_product_attention(
        heads(layer.query_dense), heads(layer.key_dense), heads(layer.value_dense),
        is_causal=bool(is_causal))
    out = out.transpose(1, 2).reshape(batch, length, layer.num_heads * layer.head_dim)
    return call_sublayer(layer.output_dense, layer, out)
