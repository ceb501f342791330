import builtins

import pytest


@pytest.fixture
def hide_matplotlib(monkeypatch):
    """Makes `import matplotlib...` fail, as on a machine without the optional dependency."""
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
