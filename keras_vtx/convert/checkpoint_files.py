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
