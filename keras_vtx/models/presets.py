"""The preset registry shared by every model family, and preset loading/saving.

A preset is one of:
- a registered name (`"vit_base_patch16_224"`): a config, built with random
  weights (no weights are downloaded: this package ships configs only);
- a directory written by `save_to_preset()` (`keras_vtx_preset.json` + weights);
- a directory written by Hugging Face `transformers` `save_pretrained()`
  (`config.json` with a `model_type`), converted by `keras_vtx.convert`;
- `hf://org/name`, downloaded with `huggingface_hub` and then read as above.
"""

import difflib
import hashlib
import json
import os

import keras

PRESET_FILE = "keras_vtx_preset.json"
WEIGHTS_FILE = "model.weights.h5"
HF_PREFIX = "hf://"

_REGISTRY = {}


def register_preset(name, class_name, config, description="", metadata=None):
    """Registers a named preset.

    Args:
        name: str, the preset's name.
        class_name: str, the task or backbone class that the config builds
            (for example `"ViTClassifier"`).
        config: dict, the constructor arguments; a task's config holds its
            backbone's under `"backbone"`.
        description: str, one line for the presets table.
        metadata: optional dict (parameter count, source paper, ...).

    Example:
    >>> register_preset("my_vit_tiny_example", "ViTBackbone", {"image_size": 32,
    ...     "patch_size": 8, "hidden_dim": 16, "num_layers": 1, "num_heads": 2,
    ...     "mlp_dim": 32})
    >>> "my_vit_tiny_example" in list_presets("ViTBackbone")
    True
    >>> unregister_preset("my_vit_tiny_example")
    """
    if name in _REGISTRY:
        raise ValueError(f"Preset {name!r} is already registered.")
    _REGISTRY[name] = {
        "class_name": class_name,
        "config": dict(config),
        "description": description,
        "metadata": dict(metadata or {}),
    }


def unregister_preset(name):
    """Removes a preset registered with `register_preset` (unknown names raise `ValueError`).

    Example:
    >>> register_preset("scratch_example", "ViTBackbone", {})
    >>> unregister_preset("scratch_example")
    >>> "scratch_example" in list_presets()
    False
    """
    if name not in _REGISTRY:
        raise ValueError(f"`name` must be a registered preset; received {name!r}.")
    del _REGISTRY[name]


def list_presets(class_name=None):
    """Returns the registered preset names, optionally only those of one class.

    Args:
        class_name: optional str, for example `"ViTClassifier"`.

    Returns:
        A sorted list of names.

    Example:
    >>> "vit_base_patch16_224" in list_presets("ViTClassifier")
    True
    """
    return sorted(
        name
        for name, entry in _REGISTRY.items()
        if class_name is None or entry["class_name"] == class_name
    )


def get_preset(name):
    """Returns a copy of a registered preset's entry, or raises a helpful `ValueError`.

    Args:
        name: str, a registered preset name.

    Returns:
        A dict with `"class_name"`, `"config"`, `"description"` and `"metadata"`.

    Example:
    >>> get_preset("vit_base_patch16_224")["config"]["backbone"]["hidden_dim"]
    768
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise ValueError(
            f"Unknown preset {name!r}: not a registered name, a directory or an "
            f"'hf://' address.{hint} See `keras_vtx.models.list_presets()`."
        )
    entry = _REGISTRY[name]
    return {**entry, "config": json.loads(json.dumps(entry["config"]))}


def resolve_preset(preset):
    """Says what kind of preset `preset` is.

    Returns:
        `("name", entry)`, `("keras_vtx", directory)` or `("transformers", directory)`.
    """
    if not isinstance(preset, (str, os.PathLike)):
        raise TypeError(
            f"`preset` must be a preset name, a directory or an 'hf://' address; "
            f"received {type(preset).__name__}."
        )
    preset = os.fspath(preset)
    if preset.startswith(HF_PREFIX):
        preset = download_from_hub(preset[len(HF_PREFIX):])
    if os.path.isdir(preset):
        if os.path.exists(os.path.join(preset, PRESET_FILE)):
            return "keras_vtx", preset
        if os.path.exists(os.path.join(preset, "config.json")):
            return "transformers", preset
        raise ValueError(
            f"Directory {preset!r} is not a preset: it has neither {PRESET_FILE} "
            "(written by `save_to_preset`) nor config.json (written by transformers' "
            "`save_pretrained`)."
        )
    return "name", get_preset(preset)


def download_from_hub(repo_id, allow_patterns=None):
    """Downloads a Hugging Face Hub repository (cached) and returns its local directory.

    Args:
        repo_id: `"org/name"`.
        allow_patterns: the files to fetch; None: configs, vocabularies and the
            weights (safetensors, or PyTorch `.bin` files where there are none).
    """
    try:
        import huggingface_hub
    except ImportError as e:
        raise ImportError(
            "Loading an 'hf://' preset needs `huggingface_hub` (pip install keras-vtx[hub])."
        ) from e
    return huggingface_hub.snapshot_download(
        repo_id,
        allow_patterns=allow_patterns or _hub_patterns(huggingface_hub, repo_id),
    )


def _hub_patterns(huggingface_hub, repo_id):
    # PyTorch *.bin weights only when the repository has no safetensors: many
    # repositories hold both, and the .bin copy would double the download.
    patterns = ["*.json", "*.txt", "*.npy", "*.safetensors"]
    try:
        files = huggingface_hub.list_repo_files(repo_id)
    except Exception:  # offline or a private mirror: take both kinds
        return patterns + ["*.bin"]
    if not any(f.endswith(".safetensors") for f in files):
        patterns.append("*.bin")
    return patterns


def save_preset(model, path, overwrite=False):
    """Writes `model`'s config and weights to the directory `path`.

    The record (`keras_vtx_preset.json`) holds the SHA-256 and size of the
    weights file, which `load_saved_preset` checks. A directory that already
    holds a preset is only replaced with `overwrite=True`.
    """
    existing = [f for f in (PRESET_FILE, WEIGHTS_FILE) if os.path.exists(os.path.join(path, f))]
    if existing and not overwrite:
        raise FileExistsError(
            f"Directory {os.fspath(path)!r} already holds a preset ({', '.join(existing)}); "
            "pass `overwrite=True` to replace it, or choose another directory."
        )
    os.makedirs(path, exist_ok=True)
    weights = os.path.join(path, WEIGHTS_FILE)
    model.save_weights(weights)
    record = {
        "class_name": type(model).__name__,
        "config": model.get_config(),
        "keras_version": keras.__version__,
        "files": {WEIGHTS_FILE: {"sha256": file_sha256(weights),
                                 "bytes": os.path.getsize(weights)}},
    }
    with open(os.path.join(path, PRESET_FILE), "w") as f:
        json.dump(record, f, indent=2, default=_json_default)


def file_sha256(path):
    """The SHA-256 of a file's bytes, as hex, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def read_preset_record(path):
    """The parsed `keras_vtx_preset.json` of the preset directory `path`."""
    file = os.path.join(path, PRESET_FILE)
    try:
        with open(file, encoding="utf-8") as f:
            record = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"The preset file {file!r} is not valid JSON ({e}): the preset is damaged; save "
            "it again with `save_to_preset` or restore the file."
        ) from None
    if not isinstance(record, dict) or "class_name" not in record or "config" not in record:
        raise ValueError(
            f"The preset file {file!r} must hold an object with 'class_name' and 'config' "
            f"(written by `save_to_preset`); received {type(record).__name__} "
            f"{sorted(record) if isinstance(record, dict) else ''}."
        )
    return record


def check_preset_files(path, record):
    """Raises a `ValueError` naming the file whose size or SHA-256 differs from the record.

    Presets written before checksums were recorded (no `"files"`) pass unchecked.
    """
    for name, expected in (record.get("files") or {}).items():
        file = os.path.join(path, name)
        if not os.path.exists(file):
            raise ValueError(f"The preset {os.fspath(path)!r} lacks its file {name!r}.")
        size, digest = os.path.getsize(file), file_sha256(file)
        if size != expected.get("bytes", size) or digest != expected.get("sha256"):
            raise ValueError(
                f"The preset file {file!r} does not match the checksum recorded in "
                f"{PRESET_FILE} ({expected.get('bytes')} bytes, sha256 "
                f"{str(expected.get('sha256'))[:16]}...; found {size} bytes, sha256 "
                f"{digest[:16]}...): it is corrupted or was replaced. Save the preset again "
                "or restore the file."
            )


def same_config_value(current, value):
    """Whether an override leaves a config value as it is (as JSON: tuples equal lists).

    Values that cannot be written as JSON (a palette object) count as changed.

    Example:
    >>> same_config_value((32, 32), [32, 32]), same_config_value(0.0, 0.1)
    (True, False)
    """
    try:
        return json.dumps(current, sort_keys=True, default=_json_default) == json.dumps(
            value, sort_keys=True, default=_json_default)
    except TypeError:
        return False


def _json_default(value):
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"Cannot write {type(value).__name__} to a preset config.")
