"""Shared handling of the text files the loaders read (COCO JSON, pairs CSV/TSV/JSONL)."""

import os


def utf8_error(path, error):
    """A `ValueError` naming `path`, the line and the byte of a `UnicodeDecodeError` in it.

    The decoder's own offsets are relative to the chunk it was decoding, so the
    file is scanned again, line by line, for the first line that is not UTF-8.

    Args:
        path: the file that failed to decode.
        error: the `UnicodeDecodeError`.

    Returns:
        The `ValueError` to raise (from `error`).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        for line, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                byte = raw[bad.start:bad.start + 1]
                return ValueError(
                    f"{path}, line {line}: not valid UTF-8 (byte 0x{byte.hex()} at column "
                    f"{bad.start + 1}); the file must be UTF-8 text. Re-save it as UTF-8 "
                    "(for example `iconv -f latin1 -t utf-8`)."
                )
    return ValueError(f"{path}: not valid UTF-8 ({error}); the file must be UTF-8 text.")


def utf8_lines(file, path):
    """The lines of the text `file` opened from `path`; bad UTF-8 raises `utf8_error`."""
    try:
        yield from file
    except UnicodeDecodeError as error:
        raise utf8_error(path, error) from error
