"""The shipped small-world prior and judge load offline and still work:
python -m pytest -q test_assets.py   (a broken or untrained checkpoint fails these)"""
import os
import random

import pytest
import torch

import judge_data as J
import model as M
import pretrain as P
import vlm_reward as V

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "small")
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.mark.parametrize("name,layers", [("prior", 6), ("prior4", 4)])
def test_shipped_prior_draws_its_captions(name, layers):
    """prior4: the 4-layer prior of `pretrain.py prior --layers 4` (README, Pretraining)."""
    torch.manual_seed(0)
    transformer, text_encoder, tok = M.load_prior(f"{ASSETS}/{name}")
    assert len(transformer.transformer_blocks) == layers
    scenes = P.heldout_prompt_scenes()[:32]
    acc, _, _ = P.prior_exact(transformer.eval(), text_encoder.eval(), tok, scenes)
    assert acc >= 0.75, acc


def test_small_preset_loads_shipped_models():
    """`python train.py --config small` trains on shipped folders: the 4-layer prior (since
    session 9) and the judge, both loaded offline."""
    from config import parse_args
    _, cfg = parse_args(["--config", "small"])
    here = os.path.dirname(os.path.abspath(__file__))
    transformer, _, _ = M.small_prior(os.path.join(here, cfg.prior))
    assert len(transformer.transformer_blocks) == 4
    V.small_judge(os.path.join(here, cfg.judge))  # raises if the folder is missing or broken


def test_word_prior_places_objects_by_words():
    """prior_words was trained with half its prompts' cell segments shuffled, so it reads "top
    right" as a place; the first prior reads the slot a segment holds (README, Pretraining)."""
    scenes = P.heldout_prompt_scenes()[:32]
    acc = {}
    for name in ("prior", "prior_words"):
        torch.manual_seed(0)
        transformer, text_encoder, tok = M.load_prior(f"{ASSETS}/{name}")
        acc[name] = [P.prior_exact(transformer.eval(), text_encoder.eval(), tok, scenes,
                                   shuffle=s)[0] for s in (False, True)]
    assert acc["prior_words"][0] >= 0.9 and acc["prior_words"][1] >= 0.6, acc  # 1.0, 0.75
    assert acc["prior"][1] <= 0.3, acc  # 0.09: canonical order only


def test_shipped_judge_answers_200_fixed_questions():
    judge = V.load_judge(f"{ASSETS}/judge")
    rng = random.Random(99)
    qs = [J.judge_sample(rng, "single") for _ in range(100)] + \
        [J.judge_sample(rng, "pair") for _ in range(100)]
    acc = J.judge_accuracy(judge, qs)
    overall = (acc["single"] + acc["pair"]) / 2  # 100 questions each side
    assert overall >= 0.9 and acc["single"] >= 0.85 and acc["pair"] >= 0.85, acc


def test_pretrain_prior_resumes(tmp_path):
    """A killed prior run continues from its state file (which holds a random.Random)."""
    import subprocess
    import sys
    run = [sys.executable, "pretrain.py", "prior", "--batch", "4", "--eval_every", "1",
           "--eval_n", "2", "--shuffle", "0.5", "--threads", "1", "--layers", "2",
           "--out", str(tmp_path / "prior"), "--state_dir", str(tmp_path / "state")]
    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run(run + ["--steps", "2"], capture_output=True, text=True, cwd=here)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run(run + ["--steps", "3", "--resume"], capture_output=True, text=True, cwd=here)
    assert r.returncode == 0 and "resumed at step 2" in r.stdout, r.stderr[-2000:]
    assert "step 3 |" in r.stdout + r.stderr and os.path.isdir(tmp_path / "prior" / "transformer")
    assert len(M.load_prior(str(tmp_path / "prior"))[0].transformer_blocks) == 2  # --layers
