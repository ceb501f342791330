"""The package's import direction: lower layers never import higher ones.

`keras_vtx.models` builds on layers, ops and losses; `keras_vtx.analysis` looks
inside models. A model module that imports the analysis tools (as Image GPT's
feature module once did) makes the two inseparable, so every import statement,
at module level or inside a function, is read here.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "keras_vtx"

# package -> packages it must not import
FORBIDDEN = {
    "models": ("keras_vtx.analysis", "keras_vtx.data"),
    "layers": ("keras_vtx.models", "keras_vtx.analysis", "keras_vtx.data"),
    "ops": ("keras_vtx.models", "keras_vtx.analysis", "keras_vtx.data", "keras_vtx.layers"),
    "losses": ("keras_vtx.models", "keras_vtx.analysis", "keras_vtx.data"),
}


def imported_modules(path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


@pytest.mark.backend_independent
@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_go_one_way(package):
    bad = sorted(
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for path in (PACKAGE / package).rglob("*.py")
        for name in imported_modules(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package])
    )
    assert not bad, bad


@pytest.mark.backend_independent
def test_the_reader_sees_function_level_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from keras_vtx.analysis import probe_layers\n")
    assert "keras_vtx.analysis" in set(imported_modules(source))
