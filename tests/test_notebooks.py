"""The example notebooks run top to bottom at toy size (ALBERT_JAX_NOTEBOOK_SMALL=1), so they never rot.

Each runs in a fresh kernel from examples/, as Jupyter runs it. A failing cell, including one of the
notebooks' own `assert`s on their results, fails the test.
"""

import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from test_finetune import needs_shared
from test_pretrain import REPO

EXAMPLES = os.path.join(REPO, "examples")
NOTEBOOKS = [
    "quickstart.ipynb",
    "pretrain_from_python.ipynb",
    "ablations.ipynb",
    pytest.param("finetune.ipynb", marks=needs_shared),  # SST-2 from ../shared/data when offline
]


def test_every_notebook_is_tested():
    names = [n if isinstance(n, str) else n.values[0] for n in NOTEBOOKS]
    assert sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".ipynb")) == sorted(names)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path, monkeypatch):
    # The kernel inherits this environment: toy sizes, and its scratch directory (tempfile) under tmp_path.
    monkeypatch.setenv("ALBERT_JAX_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as CI: datasets fails at once, not after network timeouts
    nb = nbformat.read(os.path.join(EXAMPLES, name), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))  # which python ran it
    client = NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": EXAMPLES}}
    )
    try:
        client.execute()
    except CellExecutionError as e:
        pytest.fail(f"{name} failed:\n{e}", pytrace=False)
    assert os.listdir(tmp_path), "the notebook's scratch directory was not under TMPDIR"
    kernel_prefix = "".join(o.get("text", "") for o in client.nb.cells[-1].outputs).strip()
    assert kernel_prefix == sys.prefix  # the kernel is this environment's python, not another on PATH
    printed = "".join(o.get("text", "") for cell in client.nb.cells for o in cell.get("outputs", []))
    if name == "finetune.ipynb":  # offline, it says it fell back to the shared copy
        assert (
            "datasets cannot load nyu-mll/glue sst2" in printed
            and "SST-2 from the shared GLUE copy" in printed
        )
