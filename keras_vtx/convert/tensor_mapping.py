"""Helpers every converter shares: transforms, name tables, assignment and config values.

A converter maps each Keras variable to a transformers tensor through a table
`{keras variable path: (transformers key, transform name)}` built from layer
specs `(our layer, their module, ((our param, their param, transform), ...))`.
"""

import re

import numpy as np

# How a transformers tensor becomes a Keras one.
TRANSFORMS = {
    None: lambda x: x,
    "linear": lambda x: x.T,  # torch (out, in) -> Keras (in, out)
    "conv": lambda x: x.transpose(2, 3, 1, 0),  # OIHW -> HWIO
    "squeeze": lambda x: x[0],  # (1, tokens, D) -> (tokens, D)
    "token": lambda x: x.reshape(1, 1, -1),  # (D,) -> ClassToken's (1, 1, D)
}
# The parameters of the common layers: (our name, their name, transform).
DENSE = (("kernel", "weight", "linear"), ("bias", "bias", None))
NORM = (("gamma", "weight", None), ("beta", "bias", None))
CONV = (("kernel", "weight", "conv"), ("bias", "bias", None))

# transformers' `hidden_act` names -> ours. gelu_fast is the tanh approximation too.
ACTIVATIONS = {
    "gelu": "gelu", "gelu_python": "gelu", "gelu_new": "tanh_gelu",
    "gelu_pytorch_tanh": "tanh_gelu", "gelu_fast": "tanh_gelu", "quick_gelu": "quick_gelu",
    "relu": "relu", "silu": "silu", "swish": "silu", "tanh": "tanh",
}


def activation(name):
    """Our name of transformers' `hidden_act` `name`, or a `ValueError` listing the supported."""
    if name not in ACTIVATIONS:
        raise ValueError(
            f"The checkpoint's `hidden_act` {name!r} has no equivalent here; "
            f"supported: {sorted(ACTIVATIONS)}."
        )
    return ACTIVATIONS[name]


def pair(value):
    """`(v, v)` for an int, else a tuple."""
    return (value, value) if isinstance(value, int) else tuple(value)


def require_settings(config, expected, model):
    """Raises a `ValueError` naming every key of `config` that `model` cannot reproduce.

    Args:
        config: the checkpoint's config dict.
        expected: `{key: value}`, the only value each key may have (a missing
            key counts as that value).
        model: the class name the message gives.

    Example:
    >>> require_settings({"hidden_act": "relu"}, {"hidden_act": "gelu"}, "ViTBackbone")
    Traceback (most recent call last):
    ...
    ValueError: The checkpoint's config has settings ViTBackbone does not support: ...
    """
    bad = [f"{key}={config[key]!r} (must be {value!r})"
           for key, value in expected.items() if config.get(key, value) != value]
    if bad:
        raise ValueError(
            f"The checkpoint's config has settings {model} does not support: {', '.join(bad)}."
        )


def config_values(config, table):
    """`{argument: config.get(key, default)}` for `table` `{argument: (key, default)}`.

    Example:
    >>> config_values({"d_model": 64},
    ...               {"hidden_dim": ("d_model", 256), "num_queries": ("num_queries", 100)})
    {'hidden_dim': 64, 'num_queries': 100}
    """
    return {argument: config.get(key, default) for argument, (key, default) in table.items()}


def class_names(config):
    """The class names of `config.json`'s `id2label`, in id order, or None."""
    id2label = config.get("id2label")
    if not id2label:
        return None
    return tuple(str(id2label[k]) for k in sorted(id2label, key=int))


def canonical_names(weights, rules, strip_prefix=None):
    """Renames checkpoint keys by `rules` (`(pattern, replacement)` regexes), once each.

    transformers 5 names modules differently in memory (`model.state_dict()`)
    than `save_pretrained()` and the Hub: converters read both. A key that two
    names map to is an error.
    """
    out = {}
    for key, value in weights.items():
        short = key[len(strip_prefix):] if strip_prefix and key.startswith(strip_prefix) else key
        for pattern, replacement in rules:
            short = re.sub(pattern, replacement, short)
        if short in out:
            raise ValueError(f"The checkpoint holds {short!r} under two names (one is {key!r}).")
        out[short] = value
    return out


def layer_table(embedding_layers, block_layers, block_key, num_layers):
    """`{keras variable path: (transformers key, transform)}` of an encoder.

    Args:
        embedding_layers: layer specs outside the blocks.
        block_layers: the specs of one block, relative to it.
        block_key: the blocks' module, a format with `{i}` (`"encoder.layer.{i}"`).
        num_layers: the number of blocks (ours are `block_{i}`).
    """
    layers = list(embedding_layers)
    for i in range(num_layers):
        layers += [(f"block_{i}/{ours}", f"{block_key.format(i=i)}.{theirs}", params)
                   for ours, theirs, params in block_layers]
    return {
        f"{ours}/{our_param}": (f"{theirs}.{their_param}", transform)
        for ours, theirs, params in layers
        for our_param, their_param, transform in params
    }


def assign_table(model, weights, table, path, key_prefix=""):
    """Assigns every variable of `model` from `weights` through `table`.

    Raises a `ValueError` naming the variables the table does not map, and
    (through `set_weight`) any tensor whose shape does not fit.
    """
    prefix = model.name + "/"
    variables = {
        (v.path[len(prefix):] if v.path.startswith(prefix) else v.path): v
        for v in model.weights
    }
    unmapped = sorted(set(variables) - set(table))
    if unmapped:
        raise ValueError(
            f"{type(model).__name__} has variables with no transformers counterpart: "
            f"{unmapped}."
        )
    for name, (key, transform) in table.items():
        key = key_prefix + key
        set_weight(variables[name], TRANSFORMS[transform](np.asarray(weights[key])), key, path)


def set_weight(variable, value, key, path):
    """`variable.assign(value)`, or a `ValueError` naming the tensor, file and shapes."""
    if tuple(variable.shape) != tuple(value.shape):
        raise ValueError(
            f"Checkpoint tensor {key!r} in {path!r} has shape {tuple(value.shape)} after "
            f"conversion, but {variable.path!r} expects {tuple(variable.shape)}."
        )
    variable.assign(value)
