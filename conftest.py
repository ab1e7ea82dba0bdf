"""Fixtures shared by the test files (pytest finds this file itself)."""
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="package")
def ckpt(tmp_path_factory):
    """A one-step run of the tiny preset (random small-world models): its out_dir."""
    out = tmp_path_factory.mktemp("run")
    r = subprocess.run([sys.executable, "train.py", "--config", "tiny", "--max_steps=1",
                        "--eval_n=0", "--threads=1", f"--out_dir={out}"], cwd=HERE,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return str(out)
