"""Regenerates the CLIP tokenizer's package data in keras_vtx/models/clip/assets/.

Writes, from the MIT-licensed BPE file that the open_clip_torch wheel ships
(`open_clip/bpe_simple_vocab_16e6.txt.gz`, OpenAI's original CLIP vocabulary):

- `clip_merges.txt.gz`: the header line and the 48,894 merge rules CLIP uses (the
  wheel's file holds 262,144; only the first 48,894 are part of CLIP's 49,408-token
  vocabulary, which is rebuilt from them: 256 byte symbols, the same with `</w>`, one
  token per merge, then `<|startoftext|>` and `<|endoftext|>`);
- `clip_char_map.json`: the single-character repairs of `ftfy.fix_text` (C1 controls,
  Latin ligatures, full/half-width forms, curly quotes, control characters; then NFC),
  so that the in-graph tokenizer can apply them without ftfy;
- `LICENSE_CLIP_VOCAB.txt`: the license notices of the vocabulary.

Usage:
    pip download --no-deps open_clip_torch==3.3.0 -d /tmp/wheel
    python scripts/make_clip_vocab.py --wheel /tmp/wheel/open_clip_torch-3.3.0-py3-none-any.whl

Without `--wheel`, the installed `open_clip` package is read (`pip install --no-deps
open_clip_torch==3.3.0`). ftfy must be installed for the character map.
"""

import argparse
import gzip
import importlib.util
import io
import json
import os
import pathlib
import sys
import unicodedata
import zipfile

OUT_DIR = pathlib.Path(__file__).resolve().parent.parent / "keras_vtx" / "models" / "clip" / "assets"
BPE_NAME = "open_clip/bpe_simple_vocab_16e6.txt.gz"
LICENSE_NAME = "open_clip_torch-3.3.0.dist-info/licenses/LICENSE"
NUM_MERGES = 49408 - 2 * 256 - 2  # 48,894: CLIP's vocabulary size less bytes and specials

OPENAI_NOTICE = """\
The byte-pair merges are OpenAI's CLIP vocabulary (bpe_simple_vocab_16e6.txt.gz,
https://github.com/openai/CLIP), redistributed by open_clip (open_clip_torch 3.3.0).

MIT License

Copyright (c) 2021 OpenAI

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.

------------------------------------------------------------------------------
open_clip_torch's license (the wheel the file was taken from):

"""


def read_wheel(path):
    with zipfile.ZipFile(path) as wheel:
        return wheel.read(BPE_NAME), wheel.read(LICENSE_NAME).decode("utf-8")


def read_installed():
    spec = importlib.util.find_spec("open_clip")  # does not run open_clip/__init__
    if spec is None:
        raise SystemExit("open_clip is not installed: pass --wheel PATH.")
    package = pathlib.Path(list(spec.submodule_search_locations)[0])
    bpe = (package / os.path.basename(BPE_NAME)).read_bytes()
    licenses = sorted(package.parent.glob("open_clip_torch-*.dist-info/licenses/LICENSE"))
    if not licenses:
        raise SystemExit("open_clip_torch's LICENSE was not found next to the package.")
    return bpe, licenses[-1].read_text(encoding="utf-8")


def char_map():
    """Every code point that ftfy's character-wise fixes change, and what it becomes."""
    import ftfy.fixes as fixes

    steps = (fixes.fix_c1_controls, fixes.fix_latin_ligatures, fixes.fix_character_width,
             fixes.uncurl_quotes, fixes.remove_control_chars)
    table = {}
    for code_point in range(0x110000):
        if 0xD800 <= code_point < 0xE000:  # surrogates cannot appear in UTF-8 strings
            continue
        char = chr(code_point)
        fixed, previous = char, None
        while fixed != previous:  # ftfy.fix_text repeats its steps until nothing changes
            previous = fixed
            for step in steps:
                fixed = step(fixed)
            fixed = unicodedata.normalize("NFC", fixed)
        if fixed != unicodedata.normalize("NFC", char):
            table[char] = fixed
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", help="path to open_clip_torch-3.3.0-py3-none-any.whl")
    parser.add_argument("--out", default=str(OUT_DIR), help="output directory")
    args = parser.parse_args(argv)

    bpe, license_text = read_wheel(args.wheel) if args.wheel else read_installed()
    lines = gzip.decompress(bpe).decode("utf-8").split("\n")
    header, merges = lines[0], lines[1 : 1 + NUM_MERGES]
    if not header.startswith("\"bpe_simple_vocab_16e6.txt#version") or len(merges) != NUM_MERGES:
        raise SystemExit(f"Unexpected BPE file: header {header!r}, {len(merges)} merges.")

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    # mtime=0 keeps the file byte-identical from one run to the next.
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=9) as f:
        f.write(("#version: 0.2\n" + "\n".join(merges) + "\n").encode("utf-8"))
    (out / "clip_merges.txt.gz").write_bytes(buffer.getvalue())
    table = char_map()
    (out / "clip_char_map.json").write_text(
        json.dumps(table, ensure_ascii=True, sort_keys=True, indent=0) + "\n", encoding="utf-8"
    )
    (out / "LICENSE_CLIP_VOCAB.txt").write_text(OPENAI_NOTICE + license_text, encoding="utf-8")
    print(f"Wrote {len(merges)} merges and {len(table)} character repairs to {out}.",
          file=sys.stderr)


if __name__ == "__main__":
    main()
