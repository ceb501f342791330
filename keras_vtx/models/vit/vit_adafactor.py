"""The modified Adafactor of "Scaling Vision Transformers" (Zhai et al., CVPR 2022, section 3.4).

Adam keeps two full-size moments per weight: for ViT-g that is 2 x 1.8B floats. The paper
trains with a variant of Adafactor (Shazeer & Stern, 2018) that keeps:

- the second moment *factored* for matrices: a running mean of the squared gradient over
  each row and each column (`r + c` numbers instead of `r * c`), full-size only for
  vectors and for matrices whose two largest sides are not both `min_dim_size_to_factor`
  or more;
- its decay rate `min(beta_2_cap, 1 - t^-decay_rate)` (Adafactor's schedule, capped at
  0.999 by the paper);
- a first moment (momentum 0.9, without bias correction) stored in bfloat16;
- no update clipping and no scaling by the parameter's norm (the paper removes both), so
  the learning rate means what it means for Adam;
- decoupled weight decay, stronger on the head than on the body (the paper: 3.0 and
  0.03), scaled by the learning rate as in the reference code (`big_vision`).

`keras.optimizers.Adafactor` cannot be reused here: it keeps a full-size `velocity` for
every weight beside the row and column factors (no memory saved), has no momentum and
always applies the clipping and parameter scaling.
"""

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_vtx")
class ScalingViTAdafactor(keras.optimizers.Optimizer):
    """Adafactor as modified by Scaling ViT: factored second moment, bfloat16 momentum.

    Args:
        learning_rate: float or schedule.
        beta_1: momentum of the update (0 disables the first moment).
        decay_rate: the second moment's decay is `1 - t^-decay_rate` at step `t`...
        beta_2_cap: ...capped at this value.
        epsilon: added to the squared gradient.
        min_dim_size_to_factor: a matrix's second moment is factored when its two
            largest dimensions are both at least this size.
        momentum_dtype: the dtype the first moment is stored in.
        weight_decay: decoupled weight decay of the body (multiplied by the
            learning rate).
        head_weight_decay: decoupled weight decay of the variables given to
            `set_head_variables` (the classifier's head).
        **kwargs: `keras.optimizers.Optimizer` arguments (`global_clipnorm`, ...).

    Example:
    >>> import numpy as np
    >>> w = keras.Variable(np.ones((64, 32), "float32"))
    >>> b = keras.Variable(np.ones((32,), "float32"))
    >>> opt = ScalingViTAdafactor(learning_rate=0.1)
    >>> _ = opt.apply_gradients([(np.ones((64, 32), "float32"), w), (np.ones((32,)), b)])
    >>> round(float(w.numpy()[0, 0]), 4)  # the first update is -lr * (1 - beta_1) * sign
    0.99
    >>> opt.state_sizes()  # row and column factors, bfloat16 momenta
    {'factored': 96, 'full': 32, 'momentum': 2080, 'momentum_dtype': 'bfloat16'}
    """

    def __init__(self, learning_rate=1e-3, beta_1=0.9, decay_rate=0.8, beta_2_cap=0.999,
                 epsilon=1e-30, min_dim_size_to_factor=32, momentum_dtype="bfloat16",
                 weight_decay=None, head_weight_decay=None, name="scaling_vit_adafactor",
                 **kwargs):
        # The decay is applied in `update_step` (per variable, with the head's strength),
        # not by Keras' own decoupled decay.
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        for label, value in (("weight_decay", weight_decay),
                             ("head_weight_decay", head_weight_decay)):
            if value is not None and value < 0:
                raise ValueError(f"`{label}` must be None or >= 0; received {value!r}.")
        if not 0.0 <= beta_1 < 1.0:
            raise ValueError(f"`beta_1` must be in [0, 1); received {beta_1!r}.")
        if not 0.0 < beta_2_cap < 1.0:
            raise ValueError(f"`beta_2_cap` must be in (0, 1); received {beta_2_cap!r}.")
        if decay_rate <= 0:
            raise ValueError(f"`decay_rate` must be positive; received {decay_rate!r}.")
        self.beta_1 = float(beta_1)
        self.decay_rate = float(decay_rate)
        self.beta_2_cap = float(beta_2_cap)
        self.epsilon = float(epsilon)
        self.min_dim_size_to_factor = int(min_dim_size_to_factor)
        self.momentum_dtype = keras.backend.standardize_dtype(momentum_dtype)
        self.body_weight_decay = weight_decay
        self.head_weight_decay = head_weight_decay
        self._head_keys = set()

    def set_head_variables(self, variables):
        """Gives these variables `head_weight_decay` instead of `weight_decay`."""
        self._head_keys = {self._var_key(v) for v in variables}

    def _factored_axes(self, shape):
        """The two largest axes `(a, b)` of a matrix worth factoring, else None."""
        if len(shape) < 2:
            return None
        order = sorted(range(len(shape)), key=lambda i: shape[i])
        small, large = order[-2], order[-1]
        if shape[small] < self.min_dim_size_to_factor:
            return None
        return small, large

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._rows, self._columns, self._full, self._momenta, self._axes = [], [], [], [], []
        for var in var_list:
            axes = self._factored_axes(tuple(var.shape))
            self._axes.append(axes)
            if axes is None:
                self._rows.append(None)
                self._columns.append(None)
                self._full.append(self.add_variable(tuple(var.shape), dtype="float32",
                                                    name="second_moment"))
            else:
                small, large = axes
                shape = tuple(var.shape)
                # Mean over the large axis -> one value per index of the small axis, and
                # the other way round.
                self._rows.append(self.add_variable(
                    shape[:large] + shape[large + 1:], dtype="float32", name="second_row"))
                self._columns.append(self.add_variable(
                    shape[:small] + shape[small + 1:], dtype="float32", name="second_column"))
                self._full.append(None)
            self._momenta.append(
                self.add_variable(tuple(var.shape), dtype=self.momentum_dtype, name="momentum")
                if self.beta_1 else None
            )

    def state_sizes(self):
        """Numbers of optimizer state entries: factored, full-size second moments, momenta."""
        def count(variables):
            return sum(math.prod(int(d) for d in v.shape) for v in variables if v is not None)

        return {
            "factored": count(self._rows) + count(self._columns),
            "full": count(self._full),
            "momentum": count(self._momenta),
            "momentum_dtype": self.momentum_dtype,
        }

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        gradient = ops.cast(gradient, "float32")
        step = ops.cast(self.iterations + 1, "float32")
        decay = ops.minimum(self.beta_2_cap, 1.0 - ops.power(step, -self.decay_rate))
        squared = ops.square(gradient) + self.epsilon
        axes = self._axes[index]
        if axes is None:
            second = self._full[index]
            self.assign(second, decay * second + (1.0 - decay) * squared)
            update = gradient * ops.rsqrt(second)
        else:
            small, large = axes
            row, column = self._rows[index], self._columns[index]
            self.assign(row, decay * row + (1.0 - decay) * ops.mean(squared, axis=large))
            self.assign(column, decay * column + (1.0 - decay) * ops.mean(squared, axis=small))
            # v[i, j] ~ row[i] * column[j] / mean(row): the rank-1 estimate of Adafactor.
            row_axis = small if small < large else small - 1
            row_mean = ops.mean(row, axis=row_axis, keepdims=True)
            update = (gradient * ops.expand_dims(ops.rsqrt(row / row_mean), large)
                      * ops.expand_dims(ops.rsqrt(column), small))
        if self.beta_1:
            # The reference's (optax's) bfloat16 EMA: the stored average is decayed in its
            # own dtype, the new average is float32 and is the update; only what is stored
            # for the next step is rounded.
            momentum = self._momenta[index]
            decayed = ops.multiply(ops.convert_to_tensor(momentum),
                                   ops.cast(self.beta_1, self.momentum_dtype))
            update = ops.cast(decayed, "float32") + (1.0 - self.beta_1) * update
            self.assign(momentum, ops.cast(update, self.momentum_dtype))
        strength = self._decay_of(variable)
        if strength:
            # Decoupled and scaled by the learning rate: w -= lr * (update + decay * w).
            update = update + strength * ops.cast(variable, "float32")
        lr = ops.cast(learning_rate, "float32")
        self.assign_sub(variable, ops.cast(lr * update, variable.dtype))

    def _decay_of(self, variable):
        if not self._use_weight_decay(variable):
            return None
        if self.head_weight_decay is not None and self._var_key(variable) in self._head_keys:
            return self.head_weight_decay
        return self.body_weight_decay

    def get_config(self):
        config = super().get_config()
        config.update({
            "beta_1": self.beta_1,
            "decay_rate": self.decay_rate,
            "beta_2_cap": self.beta_2_cap,
            "epsilon": self.epsilon,
            "min_dim_size_to_factor": self.min_dim_size_to_factor,
            "momentum_dtype": self.momentum_dtype,
            "weight_decay": self.body_weight_decay,
            "head_weight_decay": self.head_weight_decay,
        })
        return config


def optimizer_state_bytes(optimizer):
    """Bytes of any built Keras optimizer's per-weight state (moments, factors; no scalars).

    Example:
    >>> import numpy as np
    >>> opt = keras.optimizers.AdamW()
    >>> opt.build([keras.Variable(np.zeros((3, 4), "float32"))])
    >>> optimizer_state_bytes(opt)  # two float32 moments of 12 weights
    96
    """
    total = 0
    for variable in optimizer.variables:
        if len(variable.shape) == 0:
            continue  # the iteration count and the learning rate
        name = keras.backend.standardize_dtype(variable.dtype)
        bits = int("".join(c for c in name if c.isdigit()) or 8)  # "bfloat16" -> 16
        total += math.prod(int(d) for d in variable.shape) * bits // 8
    return total
