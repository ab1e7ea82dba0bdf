"""The ablation runner end to end on the tiny preset (random models, seconds a run)."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_ablation_runner_writes_table_and_grid(tmp_path):
    r = subprocess.run([sys.executable, "ablations.py", "--config", "tiny", "--rows", "npedit",
                        "sft_wall", "--seeds", "0", "--root", str(tmp_path),
                        "--threads=1", "--jobs=2", "--eval_n=20"], cwd=HERE, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-2000:]
    md = (tmp_path / "results.md").read_text()
    assert "| NP-Edit (no pairs) | 1 |" in md and "SFT on true pairs, 5.5x steps" in md, md
    assert "step 16/16 | sft " in (tmp_path / "sft_wall_s0.log").read_text()  # SFT, not NP-Edit
    assert "--max_steps=16" in (tmp_path / "sft_wall_s0.log").read_text() or \
        '"max_steps": 16' in (tmp_path / "sft_wall_s0" / "ckpt" / "state.json").read_text()
    assert (tmp_path / "grid.png").exists()
