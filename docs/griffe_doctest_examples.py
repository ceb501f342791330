"""A griffe extension that adapts keras_vtx docstrings to griffe's Google-style parser.

Two habits of the keras_vtx docstrings (see DESIGN.md) read well in source and run under
doctest, but griffe would render them poorly:

- Doctest lines sit flush under `Example:`::

      Example:
      >>> vit_config("B/16")["hidden_dim"]
      768

  griffe only knows the plural `Examples:` section and wants its body indented; as written
  the lines would be plain text, and Markdown would turn each `>>>` into nested block
  quotes. Such a block is rewritten as an indented `Examples:` section, which griffe
  renders as a Python console session.
- `Call arguments:` is not a Google section, so griffe shows it as a titled note whose
  entries run together into one paragraph. Its `name: description` entries are rewritten
  as a Markdown list with the names in code.

Docstrings already in the canonical form are left as they are.
"""

import re

import griffe

_EXAMPLE_HEADER = re.compile(r"^(?P<indent>\s*)Examples?:\s*$")
_CALL_HEADER = re.compile(r"^(?P<indent>\s*)Call arguments:\s*$")
_ENTRY = re.compile(r"^(?P<name>\*{0,2}\w+):\s*(?P<text>.*)$")


def _block_end(lines, start, indent, stop_at_blank):
    # A section's body ends at a line indented no deeper than `indent` (or at a blank
    # line when `stop_at_blank`: a flush doctest block has no indentation to end it).
    i = start
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            if stop_at_blank:
                break
        elif not line.startswith(indent) or (
            not stop_at_blank and len(line) - len(line.lstrip()) <= len(indent)
        ):
            break
        i += 1
    return i


def _entries_as_list(body, indent):
    inner = indent + "    "
    out = []
    for line in body:
        entry = _ENTRY.match(line[len(inner):]) if line.startswith(inner) else None
        if entry and not line[len(inner)].isspace():
            out.append(f"{inner}- `{entry.group('name')}`: {entry.group('text')}")
        elif line.strip():
            out.append(f"{inner}  {line.strip()}")
        else:
            out.append(line)
    return out


def adapt_docstring(text):
    """Returns `text` with flush doctest blocks and `Call arguments:` entries rewritten."""
    lines = text.splitlines()
    out = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        example = _EXAMPLE_HEADER.match(line)
        call = _CALL_HEADER.match(line)
        if example and i < len(lines) and lines[i].startswith(example.group("indent") + ">>>"):
            indent = example.group("indent")
            end = _block_end(lines, i, indent, stop_at_blank=True)
            out.append(indent + "Examples:")
            out.extend("    " + body_line for body_line in lines[i:end])
            i = end
        elif call:
            indent = call.group("indent")
            end = _block_end(lines, i, indent, stop_at_blank=False)
            out.append(line)
            out.extend(_entries_as_list(lines[i:end], indent))
            i = end
        else:
            out.append(line)
    return "\n".join(out)


class FlushDoctestExamples(griffe.Extension):
    """Rewrites the docstrings with `adapt_docstring` before griffe parses them."""

    def on_object(self, *, obj, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = adapt_docstring(obj.docstring.value)
