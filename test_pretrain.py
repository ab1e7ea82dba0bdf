"""The small world's asset building (assets/small/): the judge's question labels follow the
scenes, and a killed pretraining run resumes:  python -m pytest -q test_pretrain.py"""
import os
import random
import subprocess
import sys

import model as M
import toyworld as tw

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "assets", "small"))
import judge_data as J  # noqa: E402


def test_question_labels_follow_the_scene():
    rng = random.Random(1)
    for _ in range(500):
        t, q, (ref, cand), label, kind, touched = J.pair_question(rng)
        if kind == "target":
            assert label
        if kind == "unchanged":
            assert label == (t == "same_except")
        if kind == "extra_change" and t == "same_except":
            assert not label
    s = tw.Scene("white", (("red", "circle"), None, None, None))
    for _ in range(200):
        t, q, label = J.single_question(rng, s)
        if t == "background":
            assert label == ("white" in q)
        if t == "position":
            assert label == ("red circle at top left" in q)


def test_pretrain_prior_resumes(tmp_path):
    """A killed prior run continues from its state file (which holds a random.Random)."""
    run = [sys.executable, "assets/small/pretrain.py", "prior", "--batch", "4", "--eval_every", "1",
           "--eval_n", "2", "--shuffle", "0.5", "--threads", "1", "--layers", "2",
           "--out", str(tmp_path / "prior"), "--state_dir", str(tmp_path / "state")]
    r = subprocess.run(run + ["--steps", "2"], capture_output=True, text=True, cwd=HERE)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run(run + ["--steps", "3", "--resume"], capture_output=True, text=True, cwd=HERE)
    assert r.returncode == 0 and "resumed at step 2" in r.stdout, r.stderr[-2000:]
    assert "step 3 |" in r.stdout + r.stderr and os.path.isdir(tmp_path / "prior" / "transformer")
    assert len(M.load_prior(str(tmp_path / "prior"))[0].transformer_blocks) == 2  # --layers
