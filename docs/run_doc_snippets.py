"""Runs every ```python block of the documentation as a standalone script.

Each block runs in a fresh interpreter, in a fresh temporary directory (blocks write
preset directories and `.keras` files), with the repository on PYTHONPATH and the
caller's KERAS_BACKEND. Blocks that cannot run offline are fenced ```{.python .no-run}
and skipped. Exits non-zero if any block fails.

    KERAS_BACKEND=jax python docs/run_doc_snippets.py              # every page
    KERAS_BACKEND=torch python docs/run_doc_snippets.py docs/vit.md
"""

import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Only blocks opened with exactly ```python run; ```{.python .no-run} does not match.
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def run_block(code):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "snippet.py")
        with open(path, "w") as f:
            f.write(code)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
            "TF_CPP_MIN_LOG_LEVEL": "3",
        }
        return subprocess.run(
            [sys.executable, path], cwd=tmp, env=env, capture_output=True, text=True
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="*", help="Markdown files (default: docs/**/*.md)")
    args = parser.parse_args()
    pages = args.pages or sorted(
        glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)
    )
    failures = 0
    for page in pages:
        with open(page) as f:
            text = f.read()
        for match in BLOCK.finditer(text):
            line = text[: match.start()].count("\n") + 1
            start = time.time()
            result = run_block(match.group(1))
            status = "ok  " if result.returncode == 0 else "FAIL"
            print(f"{status} {os.path.relpath(page, ROOT)}:{line} ({time.time() - start:.0f}s)",
                  flush=True)
            if result.returncode:
                failures += 1
                print(result.stdout[-2000:] + result.stderr[-4000:], flush=True)
    print(f"{failures} failed" if failures else "All blocks ran.")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
