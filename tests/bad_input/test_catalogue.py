"""docs/bad_input.md names only tests that exist: the catalogue cannot silently shrink."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.backend_independent
def test_every_test_the_catalogue_names_exists():
    page = (ROOT / "docs" / "bad_input.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(test_\w+)`", page))
    defined = set()
    for module in (ROOT / "tests").rglob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)\(", module.read_text(encoding="utf-8"),
                                  re.MULTILINE))
    assert len(named) > 30
    assert sorted(named - defined) == []
    # Every test of the catalogue modules is listed on the page.
    catalogue = set()
    for module in (ROOT / "tests" / "bad_input").glob("test_*.py"):
        if module.name != "test_catalogue.py":
            catalogue |= set(re.findall(r"^def (test_\w+)\(", module.read_text(
                encoding="utf-8"), re.MULTILINE))
    assert sorted(catalogue - named) == []
