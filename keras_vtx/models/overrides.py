"""How the overrides given to `from_preset` are routed: one rule for every model.

A backbone takes the arguments of its own constructor. A task takes:

- its own constructor arguments (`num_classes`, `activation`, `dropout`, ...),
  which always go to the task, even where its backbone has an argument of the
  same name;
- `<backbone>_config={...}` (`backbone_config` for one backbone; CLIP's
  `image_encoder_config` and `text_encoder_config`, or the same dicts passed as
  `image_encoder=` / `text_encoder=`): overrides of that backbone's config;
- a name that exactly one of its backbones takes and the task does not
  (`image_size`, `num_layers`, ...), which goes to that backbone;
- a name the task declares as shared (`CLIP`'s `remat`), which goes to every
  backbone unless a `<backbone>_config` says otherwise.

Anything else (an unknown name, or one that two backbones take and the task does
not) is a `ValueError` listing the valid names.
"""

import inspect

# Arguments of every Keras layer, which constructors take through `**kwargs`.
KERAS_ARGUMENTS = frozenset({"name", "dtype", "trainable"})


def constructor_arguments(cls):
    """The names `cls(...)` takes: its constructor's parameters and Keras' own.

    Example:
    >>> from keras_vtx.models import ViTBackbone
    >>> {"image_size", "name"} <= constructor_arguments(ViTBackbone)
    True
    """
    parameters = inspect.signature(cls.__init__).parameters
    named = {n for n, p in parameters.items()
             if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return frozenset(named | KERAS_ARGUMENTS)


def check_backbone_overrides(cls, overrides):
    """Raises a `ValueError` naming every override `cls` does not take."""
    valid = constructor_arguments(cls)
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(
            f"{cls.__name__}.from_preset() got unknown overrides {unknown}; valid names: "
            f"{sorted(valid)}."
        )


def split_task_overrides(cls, overrides):
    """Routes a task's `from_preset` overrides by the rule of this module.

    Args:
        cls: the task class; `cls.preset_backbones()` maps each backbone's
            constructor argument to its class, `cls.shared_backbone_arguments`
            names the arguments that go to every backbone.
        overrides: dict, the keyword arguments given to `from_preset`.

    Returns:
        `(task_kwargs, backbone_kwargs)`, the second a dict of dicts keyed like
        `cls.preset_backbones()`.

    Example:
    >>> from keras_vtx.models import ViTClassifier
    >>> split_task_overrides(ViTClassifier, {"activation": "softmax", "image_size": 64,
    ...     "backbone_config": {"activation": "relu"}})
    ({'activation': 'softmax'}, {'backbone': {'image_size': 64, 'activation': 'relu'}})
    """
    backbones = cls.preset_backbones()
    task_args = constructor_arguments(cls) - set(backbones)
    backbone_args = {key: constructor_arguments(b) for key, b in backbones.items()}
    shared = set(getattr(cls, "shared_backbone_arguments", ()))
    routes = {f"{key}_config": key for key in backbones}
    task_kwargs = {}
    backbone_kwargs = {key: {} for key in backbones}
    explicit = []
    for name, value in overrides.items():
        key = routes.get(name) or (name if name in backbones and isinstance(value, dict)
                                   else None)
        if key is not None:
            if not isinstance(value, dict):
                raise TypeError(
                    f"`{name}` must be a dict of {backbones[key].__name__} arguments; "
                    f"received {type(value).__name__}."
                )
            unknown = sorted(set(value) - backbone_args[key])
            if unknown:
                raise ValueError(
                    f"`{name}` holds names {backbones[key].__name__} does not take: {unknown}; "
                    f"valid names: {sorted(backbone_args[key])}."
                )
            explicit.append((key, value))
        elif name in task_args:
            task_kwargs[name] = value
        elif name in shared:
            for key in backbones:
                backbone_kwargs[key][name] = value
        else:
            owners = [key for key in backbones if name in backbone_args[key]]
            if len(owners) == 1:
                backbone_kwargs[owners[0]][name] = value
            elif owners:
                raise ValueError(
                    f"`{name}` is an argument of several parts of {cls.__name__} "
                    f"({', '.join(owners)}); say which: "
                    + " or ".join(f"`{key}_config={{{name!r}: ...}}`" for key in owners) + "."
                )
            else:
                raise ValueError(_unknown_message(cls, name, task_args, backbone_args, routes))
    for key, value in explicit:  # a backbone's own dict wins over names and shared values
        backbone_kwargs[key].update(value)
    derive = getattr(cls, "derive_backbone_overrides", None)
    if derive is not None:
        derive(task_kwargs, backbone_kwargs)
    return task_kwargs, backbone_kwargs


def _unknown_message(cls, name, task_args, backbone_args, routes):
    parts = [f"{cls.__name__}: {sorted(task_args)}"]
    parts += [f"{key} (by name, or in `{route}={{...}}`): {sorted(backbone_args[key])}"
              for route, key in routes.items()]
    return (f"{cls.__name__}.from_preset() got an unknown override `{name}`. Valid names: "
            + "; ".join(parts) + ".")
