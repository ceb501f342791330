"""Reading the files of a transformers checkpoint directory, with errors that name the file."""

import json
import os

_DAMAGED = "it is truncated or damaged: download or save the checkpoint again"


def read_json(file):
    """The parsed JSON object in `file` (`config.json`, an index, a preprocessor config)."""
    file = os.fspath(file)
    try:
        with open(file, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"The checkpoint file {file!r} does not exist.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"The checkpoint file {file!r} is not valid JSON ({e}): "
                         f"{_DAMAGED}.") from None
    if not isinstance(value, dict):
        raise ValueError(f"The checkpoint file {file!r} must hold a JSON object; received a "
                         f"{type(value).__name__}.")
    return value


def read_weights(file, reader):
    """`reader(file)`, any failure to read it turned into a `ValueError` naming `file`."""
    try:
        return reader(file)
    except ValueError as e:
        if os.fspath(file) in str(e):
            raise
        raise ValueError(f"Could not read the checkpoint weights {os.fspath(file)!r} ({e}): "
                         f"{_DAMAGED}.") from e
    except Exception as e:  # safetensors' and torch's own errors name no file
        raise ValueError(f"Could not read the checkpoint weights {os.fspath(file)!r} "
                         f"({type(e).__name__}: {e}): {_DAMAGED}.") from e


def read_state_dict(path):
    """Reads a checkpoint directory's tensors as a dict of NumPy arrays.

    Looks for `model.safetensors`, then sharded safetensors
    (`model.safetensors.index.json`), then `pytorch_model.bin` (needs torch).
    """
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(single) or os.path.exists(index):
        if os.path.exists(single):
            return read_weights(single, _load_safetensors)
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"The checkpoint file {index!r} has no 'weight_map' object: "
                             "it is damaged; download the checkpoint again.")
        weights = {}
        for shard in sorted(set(weight_map.values())):
            weights.update(read_weights(os.path.join(path, shard), _load_safetensors))
        return weights
    binary = os.path.join(path, "pytorch_model.bin")
    if os.path.exists(binary):
        try:
            import torch
        except ImportError as e:
            raise ImportError(
                f"{binary!r} is a PyTorch pickle; reading it needs torch (or convert the "
                "checkpoint to model.safetensors)."
            ) from e
        state = read_weights(
            binary, lambda file: torch.load(file, map_location="cpu", weights_only=True))
        return {k: v.detach().float().numpy() for k, v in state.items()}
    raise ValueError(
        f"No weights in {path!r}: expected model.safetensors, model.safetensors.index.json "
        "or pytorch_model.bin."
    )


def _load_safetensors(file):
    from safetensors.numpy import load_file

    try:
        return load_file(file)
    except TypeError:
        # NumPy has no bfloat16: such files are read through torch when it is installed.
        try:
            from safetensors.torch import load_file as load_torch
        except ImportError:
            raise ValueError(
                f"{file!r} holds a dtype NumPy cannot read (bfloat16?); install torch "
                "to read it."
            ) from None
        return {k: v.float().numpy() for k, v in load_torch(file).items()}
