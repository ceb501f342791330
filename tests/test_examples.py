"""The example notebooks in examples/: committed clean, in sync with their source, and runnable.

`test_notebook_runs` executes each notebook top to bottom with nbclient in its tiny mode
(`KERAS_VTX_TINY=1`), in a temporary folder, so that the examples cannot rot. It is slow
(tens of seconds per notebook) and runs in one backend session only.
"""

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES_DIR = os.path.join(REPO_ROOT, "examples")
NOTEBOOKS = (
    "vit_fine_tuning.ipynb",
    "clip_zero_shot_and_training.ipynb",
    "detr_coco_format.ipynb",
    "igpt_sampling_and_probes.ipynb",
)
# The pictures each notebook must write (under KERAS_VTX_OUTPUT/<notebook name>/).
PICTURES = {
    "vit_fine_tuning.ipynb": ("attention_rollout.png", "attention_last_layer.png",
                              "mean_attention_distance.png", "patch_embedding.png",
                              "position_similarity.png"),
    "clip_zero_shot_and_training.ipynb": ("zero_shot_panel.png", "clip_attention.png",
                                          "embedding_sets.png"),
    "detr_coco_format.ipynb": ("detections.png", "detr_decoder_attention.png",
                               "detr_encoder_attention.png"),
    "igpt_sampling_and_probes.ipynb": ("samples.png", "completions.png", "probe_accuracy.png"),
}
# Seconds per cell: tiny mode takes well under a minute per notebook on one CPU core, but CI
# shares its cores and the first cell imports TensorFlow and the backend.
CELL_TIMEOUT = 600
# A `%magic` or `!shell` line (also after indentation) would not run as a plain script.
MAGIC = re.compile(r"^\s*[%!]", re.MULTILINE)


def _read(name):
    import nbformat

    return nbformat.read(os.path.join(EXAMPLES_DIR, name), as_version=4)


@pytest.mark.backend_independent
def test_examples_folder_lists_the_notebooks():
    found = sorted(f for f in os.listdir(EXAMPLES_DIR) if f.endswith(".ipynb"))
    assert found == sorted(NOTEBOOKS)
    with open(os.path.join(EXAMPLES_DIR, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    for name in NOTEBOOKS + ("KERAS_VTX_TINY", "KERAS_VTX_SOURCE", "KERAS_BACKEND"):
        assert name in readme, name


@pytest.mark.backend_independent
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_clean_and_has_the_setup_cell(name):
    notebook = _read(name)
    cells = notebook.cells
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith("# ")
    for documented in ("KERAS_VTX_TINY", "KERAS_VTX_SOURCE", "KERAS_BACKEND"):
        assert documented in cells[0].source, f"{name}: the first cell does not explain {documented}"
    setup = cells[1]
    assert setup.cell_type == "code"
    source = setup.source
    for needed in ('os.environ.get("KERAS_VTX_TINY"', 'os.environ.get("KERAS_VTX_SOURCE"',
                   'os.environ.setdefault("KERAS_BACKEND", "jax")', 'get_distribution("auto")'):
        assert needed in source, f"{name}: the setup cell lacks {needed}"
    # The backend is chosen before Keras is imported.
    assert source.index('setdefault("KERAS_BACKEND"') < source.index("import keras")
    for index, cell in enumerate(cells):
        if cell.cell_type != "code":
            continue
        assert not MAGIC.search(cell.source), f"{name}: cell {index} has a magic or shell line"
        assert cell.outputs == [], f"{name}: cell {index} has stored outputs"
        assert cell.execution_count is None, f"{name}: cell {index} has an execution count"
    # Every model the notebook trains is built under the distribution's scope.
    assert "distribution.scope()" in "".join(c.source for c in cells)


@pytest.mark.backend_independent
def test_notebooks_match_their_generator():
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "scripts", "make_notebooks.py"), "--check"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _first_line(cell):
    return (cell.source.splitlines() or [""])[0]


@pytest.mark.slow
@pytest.mark.only_backend("torch")
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path, monkeypatch):
    import keras
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    notebook = _read(name)
    # The kernel inherits the environment: the tiny mode, this session's backend, and the
    # output folder under the test's temporary folder.
    monkeypatch.setenv("KERAS_VTX_TINY", "1")
    monkeypatch.setenv("KERAS_BACKEND", keras.backend.backend())
    monkeypatch.setenv("KERAS_VTX_OUTPUT", str(tmp_path / "outputs"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    started = []  # the index of each cell as it starts, to name the one that fails
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}},
                            on_cell_execute=lambda cell, cell_index: started.append(cell_index))
    start = time.perf_counter()
    failure = None
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError) as error:
        index = started[-1] if started else None
        where = "" if index is None else f" cell {index} ({_first_line(notebook.cells[index])!r})"
        failure = f"examples/{name}:{where} failed:\n{error}"
    if failure:  # outside the except clause: one traceback, not a chained one
        pytest.fail(failure, pytrace=False)
    seconds = time.perf_counter() - start
    from PIL import Image

    folder = tmp_path / "outputs" / os.path.splitext(name)[0]
    for picture in PICTURES[name]:
        path = folder / picture
        assert path.is_file(), f"examples/{name} did not write {picture}"
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"), "float32")
        assert pixels.std() > 0, f"examples/{name}: {picture} is blank"
    print(f"{name}: {seconds:.1f} s")
