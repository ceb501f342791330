"""Training defaults shared by every task's `compile()`: one schedule, one AdamW, one decay rule.

- `warmup_cosine_schedule`: a linear warm-up from 0, then cosine decay to 0
  (ViT, CLIP and Image GPT all train this way).
- `no_decay_variables`: one rule for which variables skip weight decay: every
  variable of rank 0 or 1 (biases, norm gains and offsets, CLIP's
  `logit_scale`), plus those whose path holds one of the family's names. The
  additions: ViT `("position_embedding", "class_token", "probe")` (the MAP
  head's probe), CLIP `("class_token",)`, Image GPT `("token_embedding",
  "position_embedding")`. DETR decays every variable, as its reference does.
- `adamw`: AdamW over that schedule with that rule.
- `check_class_names`: the validation of a task's `class_names`.
"""

import keras


def warmup_cosine_schedule(learning_rate, total_steps, warmup_steps):
    """Linear warm-up from 0 to `learning_rate`, then cosine decay to 0 at `total_steps`.

    Args:
        learning_rate: float > 0, the peak rate.
        total_steps: int > `warmup_steps`, or None to keep the peak rate after
            the warm-up.
        warmup_steps: int >= 0; 0 starts at the peak rate.

    Returns:
        A `keras.optimizers.schedules.CosineDecay`.

    Example:
    >>> schedule = warmup_cosine_schedule(1.0, total_steps=10, warmup_steps=2)
    >>> [round(float(schedule(s)), 2) for s in (0, 1, 2, 6, 10)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    if not learning_rate > 0 or warmup_steps < 0:
        raise ValueError(
            "`learning_rate` must be positive and `warmup_steps` >= 0; received "
            f"{learning_rate} and {warmup_steps}."
        )
    if total_steps is not None and total_steps <= warmup_steps:
        raise ValueError(
            f"`total_steps` ({total_steps}) must exceed `warmup_steps` ({warmup_steps})."
        )
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else learning_rate,
        decay_steps=(total_steps - warmup_steps) if total_steps else 1,
        alpha=0.0 if total_steps else 1.0,  # alpha 1: no decay
        warmup_target=learning_rate if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


def no_decay_variables(model, names=()):
    """The trainable variables that skip weight decay: rank <= 1, or a path holding `names`.

    Example:
    >>> layer = keras.layers.Dense(3)
    >>> layer.build((None, 2))
    >>> [v.name for v in no_decay_variables(layer)]
    ['bias']
    """
    return [v for v in model.trainable_variables
            if len(v.shape) <= 1 or any(name in v.path for name in names)]


def adamw(model, learning_rate, total_steps, warmup_steps, weight_decay, no_decay_names=(),
          **kwargs):
    """AdamW on `warmup_cosine_schedule`, without decay on `no_decay_variables(model, names)`.

    Args:
        model: the built model whose variables are excluded from the decay.
        learning_rate: float, the peak rate (see `warmup_cosine_schedule`).
        total_steps: int or None, where the cosine decay reaches 0.
        warmup_steps: int, the linear warm-up's length.
        weight_decay: float, decoupled weight decay.
        no_decay_names: the family's additions to the no-decay rule.
        **kwargs: other `keras.optimizers.AdamW` arguments (`beta_2`,
            `epsilon`, `global_clipnorm`, ...).
    """
    optimizer = keras.optimizers.AdamW(
        learning_rate=warmup_cosine_schedule(learning_rate, total_steps, warmup_steps),
        weight_decay=weight_decay,
        **kwargs,
    )
    optimizer.exclude_from_weight_decay(var_list=no_decay_variables(model, no_decay_names))
    return optimizer


def check_class_names(class_names, num_classes):
    """`class_names` as a tuple of `num_classes` strings (None stays None), or a `ValueError`."""
    if class_names is None:
        return None
    if isinstance(class_names, str) or len(class_names) != int(num_classes):
        raise ValueError(
            f"`class_names` must be a sequence of `num_classes` ({num_classes}) "
            f"strings; received {class_names!r:.200}."
        )
    return tuple(str(c) for c in class_names)
