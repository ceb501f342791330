"""AdamW with per-variable learning-rate multipliers, and DETR's step schedule."""

import re

import keras
from keras import ops

from keras_vtx.backend import torch_multi_tensor_adam_step

# Keras' multi-tensor (torch._foreach) Adam update on PyTorch; None elsewhere, or
# when Keras moved it (the per-variable update then runs).
_TORCH_ADAM = torch_multi_tensor_adam_step()


@keras.saving.register_keras_serializable(package="keras_vtx")
class ScaledAdamW(keras.optimizers.AdamW):
    """AdamW whose updates of selected variables are scaled by a learning-rate multiplier.

    DETR trains its backbone at a tenth of the transformer's learning rate
    (1e-5 against 1e-4, facebookresearch/detr `main.py`, two parameter groups
    of one torch AdamW). Both the Adam step and the decoupled weight decay are
    proportional to the learning rate, so scaling the whole update of a
    variable is exactly a parameter group with its own learning rate. Works
    on every backend and inside compiled train steps (the multiplier is a
    Python constant per variable).

    Args:
        learning_rate_multipliers: optional dict `{regex: multiplier}`; a
            variable whose `path` matches a pattern (`re.search`, first match
            wins) has its update scaled. Saved in the config.
        **kwargs: arguments of `keras.optimizers.AdamW`.

    Variables can also be selected by object with
    `set_learning_rate_multiplier(multiplier, var_list)` (not saved in the
    config, like `exclude_from_weight_decay(var_list=...)`).

    On PyTorch, where Keras runs the optimizer eagerly, the variables are
    updated one group per multiplier with Keras' multi-tensor (`torch._foreach`)
    Adam step, as `keras.optimizers.AdamW` itself is there, instead of one
    Python `update_step` per variable (DETR-R50 has about 300 variables; the
    cost of the per-variable path is in docs/benchmarks.md).

    Example:
    >>> fast, slow = keras.Variable([1.0]), keras.Variable([1.0])
    >>> opt = ScaledAdamW(learning_rate=0.1, weight_decay=0.0)
    >>> opt.set_learning_rate_multiplier(0.1, [slow])
    >>> opt.apply([np.ones(1), np.ones(1)], [fast, slow])
    >>> [round(float(v.numpy()[0]), 4) for v in (fast, slow)]
    [0.9, 0.99]
    """

    def __init__(self, learning_rate_multipliers=None, **kwargs):
        super().__init__(**kwargs)
        self.learning_rate_multipliers = {
            str(k): float(v) for k, v in (learning_rate_multipliers or {}).items()
        }
        self._multipliers_by_id = {}

    def set_learning_rate_multiplier(self, multiplier, var_list):
        """Scales the updates (step and weight decay) of `var_list` by `multiplier`.

        Args:
            multiplier: float, for example 0.1.
            var_list: the variables.
        """
        if float(multiplier) < 0:
            raise ValueError(f"`multiplier` must be >= 0; received {multiplier}.")
        for v in var_list:
            self._multipliers_by_id[self._var_key(v)] = float(multiplier)
        self._exclude_from_weight_decay_cache = {}

    def learning_rate_multiplier(self, variable):
        """The multiplier of `variable`'s update (1.0 when none applies)."""
        key = self._var_key(variable)
        if key in self._multipliers_by_id:
            return self._multipliers_by_id[key]
        for pattern, multiplier in self.learning_rate_multipliers.items():
            if re.search(pattern, variable.path):
                return multiplier
        return 1.0

    def _use_weight_decay(self, variable):
        # Scaled variables take their (scaled) decay in `update_step` instead.
        if self.learning_rate_multiplier(variable) != 1.0:
            return False
        return super()._use_weight_decay(variable)

    def update_step(self, gradient, variable, learning_rate):
        multiplier = self.learning_rate_multiplier(variable)
        if multiplier == 1.0:
            return super().update_step(gradient, variable, learning_rate)
        lr = ops.cast(learning_rate, variable.dtype) * multiplier
        if self.weight_decay is not None and super()._use_weight_decay(variable):
            # Decoupled decay before the step, as `_apply_weight_decay` does.
            wd = ops.cast(self.weight_decay, variable.dtype)
            variable.assign(variable - variable * wd * lr)
        return super().update_step(gradient, variable, lr)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if _TORCH_ADAM is None:
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        import torch

        groups = {}
        for grad, variable in zip(grads, trainable_variables):
            group = groups.setdefault(self.learning_rate_multiplier(variable), ([], []))
            # As Adam's update_step: gradients in the variable's dtype (NumPy ones too).
            group[0].append(ops.convert_to_tensor(grad, dtype=variable.dtype))
            group[1].append(variable)
        decays = super()._use_weight_decay  # the unscaled rule (AdamW's exclusions)
        with torch.no_grad():
            for multiplier, (group_grads, variables) in groups.items():
                lr = learning_rate
                if multiplier != 1.0:
                    lr = ops.cast(learning_rate, variables[0].dtype) * multiplier
                    decayed = [v.value for v in variables if decays(v)]
                    if self.weight_decay is not None and decayed:
                        # Decoupled decay before the step, as in `update_step`.
                        factor = 1.0 - ops.cast(self.weight_decay, lr.dtype) * lr
                        torch._foreach_mul_(decayed, factor)
                _TORCH_ADAM(self, group_grads, variables, lr)

    def get_config(self):
        return {**super().get_config(),
                "learning_rate_multipliers": dict(self.learning_rate_multipliers)}


def step_decay_schedule(learning_rate, drop_steps=None, factor=0.1):
    """DETR's schedule: `learning_rate`, multiplied by `factor` after `drop_steps` steps.

    DETR drops the learning rate by 10x after 200 of 300 epochs
    (facebookresearch/detr `main.py`, `lr_drop=200`); count `drop_steps` in
    optimizer steps (epochs x steps per epoch).

    Args:
        learning_rate: float, the initial rate.
        drop_steps: optional int, the step of the drop; None keeps the rate constant.
        factor: float, the multiplier after the drop.

    Returns:
        A float (no drop) or a `keras.optimizers.schedules.PiecewiseConstantDecay`.

    Example:
    >>> schedule = step_decay_schedule(1e-4, drop_steps=10)
    >>> [round(float(schedule(s)), 8) for s in (0, 10, 11)]
    [0.0001, 0.0001, 1e-05]
    """
    if drop_steps is None:
        return float(learning_rate)
    if int(drop_steps) <= 0:
        raise ValueError(f"`drop_steps` must be a positive int or None; received {drop_steps}.")
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        boundaries=[int(drop_steps)],
        values=[float(learning_rate), float(learning_rate) * float(factor)],
    )
