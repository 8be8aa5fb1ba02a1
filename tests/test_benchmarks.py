"""The benchmarks' command lines: what they refuse, and how (their numbers are not tested)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "flags, says",
    [
        ([], "HF_FLAX_PYTHON"),  # no side python: say how to make one
        (["--hf-flax-python", "/nonexistent/python"], "not an executable python"),
    ],
)
def test_compare_hf_flax_without_its_python_is_one_error_line(flags, says):
    env = {k: v for k, v in os.environ.items() if k != "HF_FLAX_PYTHON"}
    proc = subprocess.run(
        [sys.executable, "benchmarks/train_step.py", "--compare", "hf-flax", *flags],
        cwd=REPO,
        env={**env, "PYTHONPATH": REPO},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train_step.py: error: ") and says in last
    assert "Traceback" not in proc.stderr and not proc.stdout
