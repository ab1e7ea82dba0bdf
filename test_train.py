"""The training loop on the tiny preset: resume, warm-up, lr schedule, torchrun, baselines:
python -m pytest -q test_train.py"""
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import model as M
import toytext as tt
import toyworld as tw
import train
from checkpoint import atomic_save_dir
from config import PRESETS, Config, lr_factor

HERE = os.path.dirname(os.path.abspath(__file__))


def _run(args, cwd=HERE):
    return subprocess.run([sys.executable, "train.py", "--config", "tiny", "--threads=1",
                           "--eval_n=0", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_resume_is_bit_identical(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    r = _run([f"--out_dir={a}", "--max_steps=4"])
    assert r.returncode == 0, r.stderr
    r = _run([f"--out_dir={b}", "--max_steps=2"])
    assert r.returncode == 0, r.stderr
    r = _run([f"--out_dir={b}", "--max_steps=4"])
    assert r.returncode == 0 and "resumed" in r.stdout, r.stderr
    wa, wb = load_file(f"{a}/ckpt/model.safetensors"), load_file(f"{b}/ckpt/model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_warmup_prompt_is_the_caption_of_the_reference():
    """docs/method.md: the identity warm-up's prompt is the caption of y, not the instruction."""
    import random
    _, cfg = train.parse_args(["--config", "tiny"])
    b = train.make_batches(cfg, random.Random(0), "cpu")(6)
    assert all(tt.consistent(tt.read_caption(c), tw.parse(im))
               for c, im in zip(b.captions, tw.to_uint8(b.reference)))
    assert all(tt.consistent(tt.read_caption(c), tw.parse(im))
               for c, im in zip(b.edited_captions, tw.to_uint8(b.target)))
    assert b.captions != b.instructions


@pytest.mark.parametrize("prompt,is_caption", [("caption", True), ("instruction", False)])
def test_warmup_reads_the_chosen_prompt(prompt, is_caption, tmp_path, monkeypatch):
    """The warm-up loop conditions the editor on what --warmup_prompt names (captions parse as
    captions, instructions do not)."""
    seen = []
    condition = M.Generator.condition
    monkeypatch.setattr(M.Generator, "condition",
                        lambda self, texts: seen.append(list(texts)) or condition(self, texts))
    train.main(["--config", "tiny", "--max_steps=0", "--eval_n=0", f"--warmup_prompt={prompt}",
                f"--out_dir={tmp_path}"])
    first = seen[0]  # the first warm-up step's batch
    def parses(text):
        try:
            return bool(tt.read_caption(text))
        except ValueError:
            return False
    assert all(parses(t) == is_caption for t in first), first


def test_lr_schedule_holds_then_decays_over_decay_steps():
    """Linear warm-up over 20 steps; cosine over all max_steps, or held until the last
    decay_steps and cosine-decayed over those (warm-stable-decay); constant without cosine."""
    lr = lambda step, *a: lr_factor(step, train.parse_args(  # noqa: E731
        ["--config", "tiny", "--max_steps=100", *a])[1])
    assert lr(9, "--cosine=false") == pytest.approx(0.5) and lr(99, "--cosine=false") == 1.0
    assert lr(50, "--cosine=true") == pytest.approx(0.5)
    held = ("--cosine=true", "--decay_steps=40")
    assert lr(30, *held) == lr(60, *held) == 1.0
    assert lr(80, *held) == pytest.approx(0.5) and lr(100, *held) == pytest.approx(0.0)
    assert lr(80, "--cosine=true", "--decay_steps=1000") == lr(80, "--cosine=true")  # capped


def test_vlm_weight_is_constant_or_annealed_linearly_to_its_last_step():
    """vlm_anneal 1 keeps w_vlm; vlm_anneal a takes it linearly to a w_vlm at the last step, and the
    total loss uses that weight."""
    def cfg(*a):
        return train.parse_args(["--config", "tiny", "--max_steps=101", "--w_vlm=0.2", *a])[1]
    assert [train.vlm_weight(cfg(), s) for s in (0, 100)] == [0.2, 0.2]
    c = cfg("--vlm_anneal=0.1")
    assert train.vlm_weight(c, 0) == 0.2 and train.vlm_weight(c, 50) == pytest.approx(0.11)
    assert train.vlm_weight(c, 100) == pytest.approx(0.02)
    terms = {"vlm": torch.tensor(1.0), "dmd": torch.tensor(0.0), "nothing": torch.tensor(0.0)}
    assert train.total_loss(c, terms, 100).item() == pytest.approx(0.02)


def _torchrun(*args):
    return subprocess.run(["torchrun", "--standalone", "--nproc_per_node=2", "train.py", "--config",
                           "tiny", "--threads=1", "--eval_n=0", *args], cwd=HERE,
                          capture_output=True, text=True, timeout=300)


def test_torchrun_two_ranks_hold_identical_weights(tmp_path):
    r = _torchrun("--max_steps=2", f"--out_dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ranks hold identical weights: True" in r.stdout, r.stdout[-2000:]


def test_fsdp_checkpoints_move_between_one_device_and_two_ranks(tmp_path):
    """2 steps on one process, 2 more under FSDP2 on 2 ranks (gloo), 2 more on one process:
    every hand-over resumes from the same full-state checkpoint."""
    assert _run([f"--out_dir={tmp_path}", "--max_steps=2"]).returncode == 0
    r = _torchrun("--fsdp=True", "--max_steps=4", f"--out_dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed" in r.stdout and "ranks hold identical weights: True" in r.stdout, r.stdout
    r = _run([f"--out_dir={tmp_path}", "--max_steps=6"])
    assert r.returncode == 0 and "npedit step 4" in r.stdout, r.stderr[-3000:]


def test_missing_prior_or_judge_is_a_clear_error(tmp_path):
    cfg = Config(**{**PRESETS["tiny"], "judge": str(tmp_path / "nope")})
    with pytest.raises(SystemExit, match="no judge at .*python assets/small/pretrain.py judge"):
        train.load_models(cfg, "cpu")


@pytest.mark.parametrize("method,logged", [("sft", "sft "), ("grpo", "reward ")])
def test_baselines_run_through_the_same_loop(method, logged, tmp_path):
    r = _run([f"--out_dir={tmp_path}", f"--method={method}", "--max_steps=2"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"step 2/2 | {logged}" in r.stdout, r.stdout[-2000:]
    with pytest.raises(SystemExit, match="--method must be one of"):
        train.parse_args(["--config", "tiny", "--method=dpo"])


def test_a_run_resumes_only_under_its_own_method(tmp_path):
    assert _run([f"--out_dir={tmp_path}", "--max_steps=2"]).returncode == 0
    r = _run([f"--out_dir={tmp_path}", "--method=sft", "--max_steps=4"])
    assert r.returncode == 1 and "is a --method=npedit run at step 2" in r.stderr, r.stderr[-2000:]


def test_a_kill_between_the_two_renames_of_a_save_still_resumes(tmp_path, monkeypatch):
    """atomic_save_dir moves ckpt/ to ckpt.old/, then the new one in: a kill between the two
    leaves no ckpt/. The next run must resume from ckpt.old/, not start from scratch."""
    out = tmp_path / "run"
    assert _run([f"--out_dir={out}", "--max_steps=2"]).returncode == 0
    real_replace, calls = os.replace, []

    def killed(src, dst):  # the second rename of a save never happens
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_save_dir(str(out / "ckpt"), lambda d: os.makedirs(d))
    monkeypatch.undo()
    assert not (out / "ckpt").exists() and (out / "ckpt.old" / "state.json").exists()
    r = _run([f"--out_dir={out}", "--max_steps=3"])
    assert r.returncode == 0 and "resumed from" in r.stdout and "npedit step 2" in r.stdout, \
        r.stdout[-2000:]
