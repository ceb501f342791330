
import keras
from keras import ops

from keras_vtx import backend
from keras_vtx.layers.sine_position_encoding import SinePositionEncoding2D, sine_box_encoding
from keras_vtx.layers.transformer_decoder_block import TransformerDecoderBlock
from keras_vtx.layers.transformer_encoder_block import TransformerEncoderBlock
from keras_vtx.models.detr.detr_denoising import denoising_attention_mask, noise_targets
from keras_vtx.models.detr.detr_optimizer import ScaledAdamW, step_decay_schedule
from keras_vtx.models.detr.detr_post_processing import post_process_detections
from keras_vtx.models.detr.resnet_backbone import ResNetBackbone
from keras_vtx.models.task import OptimizerBuiltBeforeFit, TaskPresets
from keras_vtx.models.training_defaults import check_class_names

QUERY_TYPES = ("learned", "anchor")


@keras.saving.register_keras_serializable(package="keras_vtx")
class DETR(OptimizerBuiltBeforeFit, TaskPresets, keras.Model):
    """DEtection TRansformer (Carion et al., ECCV 2020): set prediction of objects.

    A ResNet backbone (stride 32, or 16 with `dilation=True`, the DC5
    variant) gives a feature map that a 1x1 convolution projects to
    `hidden_dim`; the pixel mask is downsampled to the feature map by nearest
    neighbour, exactly as `torch.nn.functional.interpolate(mask, size)` picks
    pixels, and gives the 2-D sine position encoding and the key padding mask.
    A post-LayerNorm transformer encoder (positions added to queries and keys
    of every attention) and decoder (`num_queries` learned object queries as
    query positions, the target starting at zeros) follow; a shared final
    LayerNorm is applied to every decoder layer's output, and shared heads
    give class logits (`num_classes + 1`, the last is "no object") and boxes
    (a 3-layer ReLU MLP with sigmoid, normalised `(cx, cy, w, h)`).
    Logits and boxes are float32 under mixed precision.

    Args:
        backbone: a `ResNetBackbone`.
        num_classes: int, object classes, NOT counting "no object" (COCO: 91,
            DETR's count of COCO category ids, some unused).
        num_queries: int, number of object queries (the most objects per image).
        hidden_dim: int, the transformer's width (`d_model`).
        num_heads: int, attention heads.
        num_encoder_layers: int.
        num_decoder_layers: int.
        mlp_dim: int, hidden width of the feed-forward blocks (`dim_feedforward`).
        dropout: float, dropout in the transformer blocks.
        attention_dropout: float, dropout on attention probabilities (DETR's
            `nn.MultiheadAttention(dropout=0.1)`).
        aux_loss: bool, also return every earlier decoder layer's predictions
            (`"aux_outputs"`), for the auxiliary losses.
        layer_norm_epsilon: float.
        class_names: optional sequence of `num_classes` strings.
        return_attention_scores: bool, also return the encoder's
            self-attention and the decoder's cross-attention probabilities
            (for `keras_vtx.analysis.detr_attention_maps`); they are computed
            explicitly instead of by the fused attention kernel.
        query_type: `"learned"` (DETR: each object query is a learned
            position vector and every decoder layer predicts boxes afresh) or
            `"anchor"` (DAB-DETR, Liu et al., ICLR 2022: each query is a
            learned anchor box `(cx, cy, w, h)`; its position vector is an MLP
            of the anchor's sine encoding, in the format of the image's
            position encoding, and every decoder layer predicts the box as a
            correction of the previous layer's, `sigmoid(delta +
            logit(anchor))`, the next layer's anchor).
        denoising_groups: int >= 0, DN-DETR's query denoising (Li et al., CVPR
            2022) in training: this many noised copies of each image's
            ground-truth boxes and labels are fed to the decoder as extra
            queries, each trained to reconstruct its own box and class (no
            matching), beside the object queries; an attention mask keeps the
            object queries from seeing them and the groups from seeing each
            other. 0 (the published presets) is plain DETR. It needs the
            targets, so it runs in `fit()` (`compute_loss`) only; inference is
            unchanged. With it, the object queries' decoder input is a learned
            "unknown class" embedding instead of zeros.
        denoising_label_noise: float in [0, 1], the probability that a
            denoising query's label is replaced by a random class (DN-DETR's
            0.2).
        denoising_box_noise: float >= 0, DN-DETR's box noise scale (0.4): the
            centre moves by up to this fraction of half the width and height,
            and the width and height change by up to this fraction, uniformly.
        dtype: dtype or dtype policy; logits and boxes are always float32.

    Call arguments:
        inputs: a dict with `"images"` `(batch, height, width, 3)`, normalised
            with the ImageNet mean and std, and optional `"pixel_mask"`
            `(batch, height, width)`, 1 for real pixels and 0 for padding;
            or a bare image tensor (no padding).
        training: bool.

    Returns:
        A dict: `"logits"` `(batch, num_queries, num_classes + 1)`, `"boxes"`
        `(batch, num_queries, 4)` and, with `aux_loss`, `"aux_outputs"`: a
        list of `num_decoder_layers - 1` dicts with `"logits"` and `"boxes"`.
        With `return_attention_scores`, also `"encoder_attention_scores"`
        (one `(batch, num_heads, h * w, h * w)` tensor per encoder layer),
        `"decoder_attention_scores"` (the cross-attention of the object
        queries, one `(batch, num_heads, num_queries, h * w)` tensor per
        decoder layer) and `"feature_mask"` `(batch, h, w)`, the pixel mask
        on the `h x w` feature map (positions are flattened row by row).
        With `denoising_groups` and `training=True`, also
        `"denoising_context"`: the encoder's output, its position encoding
        and mask, for the denoising queries of `compute_loss`.

    Example:
    >>> model = DETR.from_preset("detr_tiny_test")
    >>> out = model({"images": np.zeros((1, 64, 48, 3), "float32"),
    ...              "pixel_mask": np.ones((1, 64, 48), "int32")})
    >>> tuple(out["logits"].shape), tuple(out["boxes"].shape), len(out["aux_outputs"])
    ((1, 5, 4), (1, 5, 4), 1)
    """

    backbone_cls = ResNetBackbone
    # Overrides such as `num_queries` or `query_type="anchor"` restart parts of a
    # trained detector: `rebuild_with` names them in a warning.
    warn_on_fresh_weights = True

    def __init__(
        self,
        backbone,
        num_classes=91,
        num_queries=100,
        hidden_dim=256,
        num_heads=8,
        num_encoder_layers=6,
        num_decoder_layers=6,
        mlp_dim=2048,
        dropout=0.1,
        attention_dropout=0.1,
        aux_loss=True,
        layer_norm_epsilon=1e-5,
        class_names=None,
        return_attention_scores=False,
        query_type="learned",
        denoising_groups=0,
        denoising_label_noise=0.2,
        denoising_box_noise=0.4,
        dtype=None,
        **kwargs,
    ):
        if not isinstance(backbone, ResNetBackbone):
            raise TypeError(
                f"`backbone` must be a ResNetBackbone; received {type(backbone).__name__}."
            )
        for name, value in (("num_classes", num_classes), ("num_queries", num_queries),
                            ("hidden_dim", hidden_dim), ("num_heads", num_heads),
                            ("num_decoder_layers", num_decoder_layers), ("mlp_dim", mlp_dim)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive int; received {value!r}.")
        if not isinstance(num_encoder_layers, int) or num_encoder_layers < 0:
            raise ValueError(
                f"`num_encoder_layers` must be an int >= 0; received {num_encoder_layers!r}."
            )
        if hidden_dim % num_heads or hidden_dim % 4:
            raise ValueError(
                f"`hidden_dim` ({hidden_dim}) must be divisible by `num_heads` ({num_heads}) "
                "and by 4 (the sine encoding's sin/cos pairs of y and x)."
            )
        class_names = check_class_names(class_names, num_classes)
        if query_type not in QUERY_TYPES:
            raise ValueError(f"`query_type` must be one of {QUERY_TYPES}; received {query_type!r}.")
        if isinstance(denoising_groups, bool) or not isinstance(denoising_groups, int) \
                or denoising_groups < 0:
            raise ValueError(
                f"`denoising_groups` must be an int >= 0; received {denoising_groups!r}."
            )
        if not 0.0 <= float(denoising_label_noise) <= 1.0:
            raise ValueError(
                f"`denoising_label_noise` must be in [0, 1]; received {denoising_label_noise!r}."
            )
        if not float(denoising_box_noise) >= 0.0:
            raise ValueError(
                f"`denoising_box_noise` must be >= 0; received {denoising_box_noise!r}."
            )
        super().__init__(dtype=dtype, **kwargs)
        self.backbone = backbone
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.num_encoder_layers = num_encoder_layers
        self.num_decoder_layers = num_decoder_layers
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.aux_loss = bool(aux_loss)
        self.layer_norm_epsilon = layer_norm_epsilon
        self.class_names = class_names
        self.return_attention_scores = bool(return_attention_scores)
        self.query_type = query_type
        self.denoising_groups = denoising_groups
        self.denoising_label_noise = float(denoising_label_noise)
        self.denoising_box_noise = float(denoising_box_noise)

        channels = backbone.output_shape[-1]
        policy = self.dtype_policy
        self.input_projection = keras.layers.Conv2D(
            hidden_dim, 1, dtype=policy, name="input_projection"
        )
        self.input_projection.build((None, None, None, channels))
        self.position_encoding = SinePositionEncoding2D(
            hidden_dim // 2, dtype="float32", name="position_encoding"
        )
        block_args = dict(
            num_heads=num_heads, mlp_dim=mlp_dim, dropout=dropout,
            attention_dropout=attention_dropout, norm_first=False, activation="relu",
            layer_norm_epsilon=layer_norm_epsilon, dtype=policy,
        )
        self.encoder_blocks = []
        for i in range(num_encoder_layers):
            block = TransformerEncoderBlock(**block_args, name=f"encoder_block_{i}")
            block.build((None, None, hidden_dim))
            self.encoder_blocks.append(block)
        self.decoder_blocks = []
        for i in range(num_decoder_layers):
            block = TransformerDecoderBlock(**block_args, name=f"decoder_block_{i}")
            block.build((None, num_queries, hidden_dim), (None, None, hidden_dim))
            self.decoder_blocks.append(block)
        self.decoder_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=policy, name="decoder_norm"
        )
        self.decoder_norm.build((None, num_queries, hidden_dim))
        if query_type == "learned":
            # nn.Embedding's N(0, 1) initialisation, as DETR's `query_embed`.
            self.object_queries = self.add_weight(
                shape=(num_queries, hidden_dim),
                initializer=keras.initializers.RandomNormal(stddev=1.0), name="object_queries",
            )
        else:
            # DAB-DETR's `refpoint_embed`: boxes as logits, N(0, 1) like nn.Embedding.
            self.anchor_boxes = self.add_weight(
                shape=(num_queries, 4), initializer=keras.initializers.RandomNormal(stddev=1.0),
                name="anchor_boxes",
            )
        if query_type == "anchor" or denoising_groups:
            # DAB-DETR's `ref_point_head`: a box's sine encoding -> a query position.
            self.box_position_head = [
                keras.layers.Dense(hidden_dim, activation="relu", dtype=policy,
                                   name="box_position_head_0"),
                keras.layers.Dense(hidden_dim, dtype=policy, name="box_position_head_1"),
            ]
            self.box_position_head[0].build((None, None, 2 * hidden_dim))
            self.box_position_head[1].build((None, None, hidden_dim))
        if denoising_groups:
            # DN-DETR's `label_enc`: the denoising queries' content; the last entry
            # ("unknown class") starts the object queries.
            self.label_embedding = keras.layers.Embedding(
                num_classes + 1, hidden_dim, dtype=policy, name="label_embedding"
            )
            self.label_embedding.build((None, None))
            self.denoising_seed = keras.random.SeedGenerator(0, name="denoising_seed")
            self.denoising_loss_tracker = keras.metrics.Mean(name="denoising_loss")
        # Heads in float32: logits feed the loss and boxes its box arithmetic.
        self.class_head = keras.layers.Dense(num_classes + 1, dtype="float32", name="class_head")
        self.box_head = [
            keras.layers.Dense(hidden_dim, activation="relu", dtype="float32",
                               name="box_head_0"),
            keras.layers.Dense(hidden_dim, activation="relu", dtype="float32",
                               name="box_head_1"),
            keras.layers.Dense(4, dtype="float32", name="box_head_2"),
        ]
        self.class_head.build((None, num_queries, hidden_dim))
        for layer in self.box_head:
            layer.build((None, num_queries, hidden_dim))
        self.built = True

    # --- Forward pass ---

    def __call__(self, *args, **kwargs):
        if args:
            self._split_inputs(args[0])
        return keras.Model.__call__(self, *args, **kwargs)

    def _split_inputs(self, inputs):
        """Returns `(images, pixel_mask or None)`, raising a clear error for bad inputs."""
        if isinstance(inputs, dict):
            if "images" not in inputs or not set(inputs) <= {"images", "pixel_mask"}:
                raise ValueError(
                    "`inputs` must be a dict with 'images' (batch, height, width, 3) and "
                    f"optionally 'pixel_mask' (batch, height, width); received keys "
                    f"{sorted(inputs)}."
                )
            images, mask = inputs["images"], inputs.get("pixel_mask")
        else:
            images, mask = inputs, None
        if isinstance(images, (list, tuple)) or "Ragged" in type(images).__name__:
            raise ValueError(
                "`images` must be one tensor (batch, height, width, 3): pad images of "
                "different sizes to a common size and pass `pixel_mask` (1 = real pixel, "
                "0 = padding), as `keras_vtx.data` detection pipelines do; received a "
                f"{type(images).__name__}."
            )
        shape = tuple(images.shape)
        if len(shape) != 4 or shape[-1] not in (3, None):
            raise ValueError(
                f"`images` must have shape (batch, height, width, 3); received {shape}."
            )
        if mask is not None:
            mask_shape = tuple(mask.shape)
            if len(mask_shape) != 3 or any(
                a is not None and b is not None and a != b for a, b in zip(mask_shape, shape)
            ):
                raise ValueError(
                    "`pixel_mask` must have shape (batch, height, width) equal to the "
                    f"images' {shape[:3]}; received {mask_shape}."
                )
        return images, mask

    def call(self, inputs, training=None):
        images, pixel_mask = self._split_inputs(inputs)
        features = self.backbone(images, training=training)
        if pixel_mask is None:
            pixel_mask = ops.ones(ops.shape(images)[:3], dtype="bool")
        mask = downsample_mask(pixel_mask, ops.shape(features)[1], ops.shape(features)[2])
        x = self.input_projection(features)
        position = self.position_encoding(mask)
        batch = ops.shape(x)[0]
        x = ops.reshape(x, (batch, -1, self.hidden_dim))
        position = ops.reshape(position, (batch, -1, self.hidden_dim))
        mask = ops.reshape(mask, (batch, -1))
        key_mask = mask[:, None, None, :]
        scores = self.return_attention_scores
        encoder_scores = []
        for block in self.encoder_blocks:
            x = block(x, attention_mask=key_mask, position_encoding=position,
                      return_attention_scores=scores, training=training)
            if scores:
                x, block_scores = x
                encoder_scores.append(block_scores)
        memory = x
        target, query_position, reference = self._object_queries(batch, memory.dtype)
        predictions, decoder_scores = self._decode(
            target, query_position, reference, memory, position, mask, training=training,
            return_attention_scores=scores,
        )
        outputs = dict(predictions[-1])
        if self.aux_loss:
            outputs["aux_outputs"] = predictions[:-1]
        if scores:
            outputs["encoder_attention_scores"] = encoder_scores
            outputs["decoder_attention_scores"] = decoder_scores
            outputs["feature_mask"] = ops.reshape(
                mask, (batch, ops.shape(features)[1], ops.shape(features)[2])
            )
        if training and self.denoising_groups:
            outputs["denoising_context"] = {
                "memory": memory, "memory_position": position, "memory_mask": mask,
            }
        return outputs

    def _object_queries(self, batch, dtype):
        """The object queries' decoder input, position (learned) and anchor boxes (anchor)."""
        shape = (batch, self.num_queries, self.hidden_dim)
        if self.denoising_groups:
            unknown = self.label_embedding(ops.full((1, 1), self.num_classes, dtype="int32"))
            target = ops.broadcast_to(ops.cast(unknown, dtype), shape)
        else:
            target = ops.zeros(shape, dtype=dtype)
        if self.query_type == "learned":
            position = ops.broadcast_to(ops.cast(self.object_queries, dtype)[None], shape)
            return target, position, None
        anchors = ops.sigmoid(ops.cast(self.anchor_boxes, "float32"))
        return target, None, ops.broadcast_to(anchors[None], (batch, self.num_queries, 4))

    def _box_position(self, boxes, dtype):
        """A query position from normalised boxes (DAB-DETR's `ref_point_head`)."""
        x = ops.cast(sine_box_encoding(boxes, self.hidden_dim // 2), dtype)
        for layer in self.box_position_head:
            x = layer(x)
        return x

    def _decode(self, target, query_position, reference, memory, position, mask,
                self_attention_mask=None, training=None, return_attention_scores=False):
        """Runs the decoder; returns the predictions of the layers it reports, and scores.

        Exactly one of `query_position` (learned queries: fixed positions) and
        `reference` (anchor boxes: a position per layer from the anchors, which
        every layer's boxes refine) is given.
        """
        predictions, cross_scores = [], []
        last = len(self.decoder_blocks) - 1
        for index, block in enumerate(self.decoder_blocks):
            if reference is not None:
                query_position = self._box_position(reference, target.dtype)
            target = block(
                target, memory, query_position=query_position, memory_position=position,
                memory_mask=mask, self_attention_mask=self_attention_mask,
                return_attention_scores=return_attention_scores, training=training,
            )
            if return_attention_scores:
                target, _, block_scores = target
                cross_scores.append(block_scores)
            if reference is None and not self.aux_loss and index < last:
                continue
            prediction = self._heads(self.decoder_norm(target), reference)
            predictions.append(prediction)
            if reference is not None:
                # DAB-DETR: the next layer's anchors, without a gradient through them.
                reference = ops.stop_gradient(prediction["boxes"])
        if not self.aux_loss:
            predictions = predictions[-1:]
        return predictions, cross_scores

    def _heads(self, hidden, reference=None):
        hidden = ops.cast(hidden, "float32")
        boxes = hidden
        for layer in self.box_head:
            boxes = layer(boxes)
        if reference is not None:
            boxes = boxes + inverse_sigmoid(reference)
        return {"logits": self.class_head(hidden), "boxes": ops.sigmoid(boxes)}

    # --- Denoising (DN-DETR) ---

    def denoising_queries(self, y, dtype=None):
        """Noised ground truth as decoder queries, and the decoder's self-attention mask.

        Each of the `denoising_groups` groups holds a noised copy of every
        target slot of `y` (`max_boxes` slots per image, padding included; see
        `detr_denoising.noise_targets`), embedded by its (noised) label. The
        mask (`detr_denoising.denoising_attention_mask`) covers the denoising
        queries followed by the `num_queries` object queries: the object
        queries see each other only; a denoising query sees the real targets
        of its own group and the object queries.

        Args:
            y: the targets dict (`"boxes"` `(batch, max_boxes, 4)`, `"labels"`
                `(batch, max_boxes)`, -1 for padding).
            dtype: the decoder's compute dtype (default: the model's).

        Returns:
            A dict: `"target"` `(batch, groups * max_boxes, hidden_dim)` (the
            label embeddings), `"boxes"` `(batch, groups * max_boxes, 4)` (the
            noised boxes), `"valid"` `(batch, groups * max_boxes)` (real
            targets) and `"attention_mask"` `(batch, 1, n, n)` with `n =
            groups * max_boxes + num_queries`, True where a query may attend.
        """
        if not self.denoising_groups:
            raise ValueError("`denoising_queries` needs a model built with `denoising_groups`.")
        labels, boxes, valid = noise_targets(
            y["labels"], y["boxes"], self.denoising_groups, self.num_classes,
            self.denoising_label_noise, self.denoising_box_noise, seed=self.denoising_seed,
        )
        return {
            "target": ops.cast(self.label_embedding(labels), dtype or self.compute_dtype),
            "boxes": boxes,
            "valid": valid,
            "attention_mask": denoising_attention_mask(valid, self.denoising_groups,
                                                       self.num_queries),
        }

    def denoising_outputs(self, y, context, training=None):
        """Runs the decoder on the denoising queries and the object queries together.

        Args:
            y: the targets dict.
            context: `outputs["denoising_context"]` of a training call.
            training: bool.

        Returns:
            A list with one dict per reported decoder layer (the last one
            last), each `"logits"` `(batch, groups * max_boxes, num_classes
            + 1)` and `"boxes"` `(batch, groups * max_boxes, 4)`: the denoising
            queries' predictions, slot `g * max_boxes + i` reconstructing
            target `i`.
        """
        memory = context["memory"]
        batch = ops.shape(memory)[0]
        queries = self.denoising_queries(y, memory.dtype)
        target, position, reference = self._object_queries(batch, memory.dtype)
        count = queries["boxes"].shape[1]
        target = ops.concatenate([queries["target"], target], axis=1)
        if reference is None:
            position = ops.concatenate(
                [self._box_position(queries["boxes"], memory.dtype), position], axis=1
            )
        else:
            reference = ops.concatenate([queries["boxes"], reference], axis=1)
        predictions, _ = self._decode(
            target, position, reference, memory, context["memory_position"],
            context["memory_mask"], self_attention_mask=queries["attention_mask"],
            training=training,
        )
        return [{k: v[:, :count] for k, v in p.items()} for p in predictions]

    # --- Inference ---

    def predict_detections(self, x, image_sizes=None, threshold=0.0, top_k=None,
                           batch_size=None):
        """Runs the model and returns per-image detections (see `post_process_detections`).

        Args:
            x: the model's inputs (a dict with `"images"` and `"pixel_mask"`, or
                an image batch).
            image_sizes: `(batch, 2)` `(height, width)` to scale boxes to; by
                default each image's unpadded size, from `pixel_mask`.
            threshold: float, keep detections scoring above it.
            top_k: optional int, at most this many detections per image.
            batch_size: optional int, passed to `predict`.

        Returns:
            A list of dicts of NumPy arrays `"scores"`, `"labels"`, `"boxes"`
            (absolute `x1, y1, x2, y2`), best first.
        """
        self._split_inputs(x)
        outputs = self.predict(x, batch_size=batch_size, verbose=0)
        if image_sizes is None:
            image_sizes = unpadded_sizes(x)
        return post_process_detections(outputs, image_sizes, threshold=threshold, top_k=top_k)

    # --- Training ---

    def compile(
        self,
        optimizer="auto",
        loss="auto",
        metrics=None,
        learning_rate=1e-4,
        backbone_learning_rate=1e-5,
        weight_decay=1e-4,
        global_clipnorm=0.1,
        lr_drop_steps=None,
        lr_drop_factor=0.1,
        matcher="auto",
        jit_compile="auto",
        **kwargs,
    ):
        """Compiles with DETR's training defaults (facebookresearch/detr `main.py`).

        Args:
            optimizer: `"auto"` is `ScaledAdamW` with `learning_rate`, the
                backbone's variables at `backbone_learning_rate` (an update
                multiplier of their ratio), decoupled `weight_decay` on every
                variable, global gradient-norm clipping at `global_clipnorm` and
                the step schedule: the rate times `lr_drop_factor` after
                `lr_drop_steps` optimizer steps (DETR: 200 of 300 epochs; None
                keeps it constant).
            loss: `"auto"` is `keras_vtx.losses.HungarianLoss` with this model's
                `num_classes` and `matcher` (`"graph"`: the in-graph exact matcher,
                compiled into the train step; `"scipy"`: on the host; `"auto"`:
                graph on TensorFlow and JAX, scipy on eager PyTorch). Any loss
                called as `loss(y_true, y_pred)` with the target and output dicts.
            metrics: passed to `keras.Model.compile`.
            jit_compile: `"auto"` compiles the train step with XLA on TensorFlow
                (CPU included, unlike Keras' own "auto") and JAX, the matcher
                inside it; PyTorch runs eagerly; under a TensorFlow strategy
                with several replicas (`MirroredStrategy`), where Keras' XLA step
                cannot reach the other replicas' variables, a `tf.function`
                without XLA (the matcher still inside). A bool is passed on.
            **kwargs: passed to `keras.Model.compile` (for example `steps_per_execution`).
        """
        if optimizer == "auto":
            if learning_rate <= 0 or backbone_learning_rate < 0:
                raise ValueError(
                    "`learning_rate` must be positive and `backbone_learning_rate` >= 0; "
                    f"received {learning_rate} and {backbone_learning_rate}."
                )
            optimizer = ScaledAdamW(
                learning_rate=step_decay_schedule(learning_rate, lr_drop_steps, lr_drop_factor),
                weight_decay=weight_decay,
                global_clipnorm=global_clipnorm,
            )
            optimizer.set_learning_rate_multiplier(
                backbone_learning_rate / learning_rate, self.backbone.trainable_variables
            )
        if loss == "auto":
            from keras_vtx.losses.hungarian_loss import HungarianLoss

            loss = HungarianLoss(num_classes=self.num_classes, matcher=matcher)
        if self.denoising_groups and not hasattr(loss, "denoising_losses"):
            raise ValueError(
                "`denoising_groups` needs a loss with a `denoising_losses(y_true, outputs, "
                "groups)` method, such as `keras_vtx.losses.HungarianLoss` (loss='auto'); "
                f"received {type(loss).__name__}."
            )
        if jit_compile == "auto":
            jit_compile = backend.default_jit_compile()
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics,
                        jit_compile=jit_compile, **kwargs)
        # `compute_loss` calls the set loss itself with the target and output dicts.
        # Without Keras' wrapper, `fit` does not "build" the loss on placeholder
        # targets (all ones on PyTorch), which the loss's target checks reject.
        self._compile_loss = None

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if self.loss is None:
            return super().compute_loss(x, y, y_pred, sample_weight, training=training)
        if sample_weight is not None:
            raise ValueError(
                "DETR's set loss takes no `sample_weight` (pad targets with label -1 "
                "instead); received a value."
            )
        loss = ops.cast(self.loss(y, y_pred), "float32")
        if self.denoising_groups and isinstance(y_pred, dict) and "denoising_context" in y_pred:
            outputs = self.denoising_outputs(y, y_pred["denoising_context"], training=training)
            denoising = ops.cast(
                self.loss.denoising_losses(y, outputs, self.denoising_groups, total=True),
                "float32",
            )
            self.denoising_loss_tracker.update_state(denoising)
            loss = loss + denoising
        for extra in self.losses:
            loss = loss + ops.cast(ops.sum(extra), "float32")
        return loss

    def test_step(self, *args):
        # Query denoising runs in training only: leave `denoising_loss` out of evaluation's
        # logs rather than report a `val_denoising_loss` of 0. (JAX's step takes and returns
        # a state beside the data and the logs.)
        result = super().test_step(*args)
        if not self.denoising_groups:
            return result
        logs = result[0] if isinstance(result, tuple) else result
        logs = {name: value for name, value in logs.items() if name != "denoising_loss"}
        return (logs, *result[1:]) if isinstance(result, tuple) else logs

    # --- Serialisation ---

    def get_config(self):
        return self.base_config(
            num_classes=self.num_classes,
            num_queries=self.num_queries,
            hidden_dim=self.hidden_dim,
            num_heads=self.num_heads,
            num_encoder_layers=self.num_encoder_layers,
            num_decoder_layers=self.num_decoder_layers,
            mlp_dim=self.mlp_dim,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            aux_loss=self.aux_loss,
            layer_norm_epsilon=self.layer_norm_epsilon,
            class_names=None if self.class_names is None else list(self.class_names),
            return_attention_scores=self.return_attention_scores,
            query_type=self.query_type,
            denoising_groups=self.denoising_groups,
            denoising_label_noise=self.denoising_label_noise,
            denoising_box_noise=self.denoising_box_noise,
        )


def inverse_sigmoid(x, epsilon=1e-5):
    """`log(x / (1 - x))` of values in [0, 1], clipped `epsilon` away from 0 and 1."""
    x = ops.clip(ops.cast(x, "float32"), 0.0, 1.0)
    return ops.log(ops.maximum(x, epsilon) / ops.maximum(1.0 - x, epsilon))


def downsample_mask(pixel_mask, height, width):
    """Nearest-neighbour resize of a `(batch, H, W)` mask to `(batch, height, width)`, boolean.

    Picks source row `min(floor(i * s), H - 1)` with `s = float32(H) / height`
    computed in float32, which is what `torch.nn.functional.interpolate(...,
    size=(height, width))` (mode "nearest") does, so DETR checkpoints see the
    same mask.

    Example:
    >>> mask = np.ones((1, 5, 7), "int32"); mask[:, 2:] = 0
    >>> keras.ops.convert_to_numpy(downsample_mask(mask, 2, 2)).astype(int).tolist()
    [[[1, 1], [0, 0]]]
    """
    mask = ops.cast(pixel_mask, "bool")

    def source_index(size_in, size_out):
        scale = ops.cast(size_in, "float32") / ops.cast(size_out, "float32")
        index = ops.floor(ops.cast(ops.arange(size_out), "float32") * scale)
        return ops.minimum(ops.cast(index, "int32"), ops.cast(size_in, "int32") - 1)

    shape = ops.shape(mask)
    mask = ops.take(mask, source_index(shape[1], height), axis=1)
    return ops.take(mask, source_index(shape[2], width), axis=2)


def unpadded_sizes(x):
    """Each image's `(height, width)` before padding, from its pixel mask (NumPy)."""
    images, mask = (x["images"], x.get("pixel_mask")) if isinstance(x, dict) else (x, None)
    if mask is None:
        shape = keras.ops.shape(images)
        return [[int(shape[1]), int(shape[2])]] * int(shape[0])
    mask = keras.ops.convert_to_numpy(mask).astype(bool)
    return list(zip(mask.any(2).sum(1).tolist(), mask.any(1).sum(1).tolist()))
