"""Tests of the NP-Edit training pieces on the tiny preset:  python -m pytest -q test_train.py"""
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import dmd
import model as M
import toyworld as tw
import train
import vlm_reward as V

HERE = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------- DMD, known answer

def _gaussian_v(mu, std):
    """Exact rectified-flow velocity for data N(mu, std^2) (per dimension):
    E[x0 | x_t] = mu + (1-t) std^2 / ((1-t)^2 std^2 + t^2) (x_t - (1-t) mu), v = (x_t - x0) / t."""
    def v(x_t, t):
        t = t.view(-1, 1)
        s2 = std ** 2
        x0 = mu + (1 - t) * s2 / ((1 - t) ** 2 * s2 + t ** 2) * (x_t - (1 - t) * mu)
        return (x_t - x0) / t
    return v


def _run_dmd(swap_real_for_fake, steps=400):
    torch.manual_seed(0)
    target_mu, target_std = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.5])
    a = torch.ones(2, requires_grad=True)   # generator: x = a * z + b, starts at N(0, 1)
    b = torch.zeros(2, requires_grad=True)
    opt = torch.optim.Adam([a, b], lr=0.02)
    for _ in range(steps):
        x = a * torch.randn(256, 2) + b
        fake = _gaussian_v(b.detach(), a.detach().abs())  # the exact score of the generator
        real = fake if swap_real_for_fake else _gaussian_v(target_mu, target_std)
        # dmd_loss works on image-shaped tensors: view (B, 2) as (B, 2, 1, 1)
        loss = dmd.dmd_loss(x.view(-1, 2, 1, 1), lambda xt, t: real(xt.view(-1, 2), t).view(xt.shape),
                            lambda xt, t: fake(xt.view(-1, 2), t).view(xt.shape))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return b.detach(), a.detach().abs(), target_mu, target_std


def test_dmd_moves_generator_to_target_gaussian():
    mu, std, target_mu, target_std = _run_dmd(False)
    assert torch.allclose(mu, target_mu, rtol=0.1, atol=0.1), mu
    assert torch.allclose(std, target_std, rtol=0.1), std


def test_dmd_does_not_move_when_real_equals_fake():
    mu, std, _, _ = _run_dmd(True, steps=50)
    assert torch.allclose(mu, torch.zeros(2)) and torch.allclose(std, torch.ones(2))


# ----------------------------------------------------------------------------- gradients

@pytest.fixture(scope="module")
def tiny_models():
    cfg = train.Config(**train.PRESETS["tiny"])
    torch.manual_seed(0)
    return train.load_models(cfg, "cpu")


def test_vlm_loss_gradient_reaches_generated_pixels_not_reference(tiny_models):
    judge = tiny_models.judge
    ref = torch.rand(3, 3, 32, 32, requires_grad=True)
    x = torch.rand(3, 3, 32, 32, requires_grad=True)
    instr = ["make the red circle blue", "remove the green square", "add a red square at top left"]
    V.vlm_loss(judge, ref, x, instr).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert ref.grad is None
    assert V.removed_object(instr[1]) == "green square"


def test_unroll_gradient_flows_through_both_steps(tiny_models):
    generator = tiny_models.generator
    outputs = []

    class Recorder(torch.nn.Module):
        def forward(self, *a):
            out = generator(*a)
            out.retain_grad()
            outputs.append(out)
            return out

    ref = torch.rand(2, 3, 32, 32) * 2 - 1
    ids, mask = generator.condition(["make the red circle blue"] * 2)
    generator.zero_grad()
    x = M.unroll(Recorder(), ref, ids, mask, k=2)
    x.square().mean().backward()
    assert len(outputs) == 2
    assert all(o.grad is not None and o.grad.abs().sum() > 0 for o in outputs)
    assert generator.transformer.proj_out.weight.grad.abs().sum() > 0
    # the zero-initialised reference channels receive gradient too
    assert generator.transformer.patch_embed.proj.weight.grad[:, 3:].abs().sum() > 0


def test_generator_starts_as_the_prior(tiny_models):
    generator, real_score = tiny_models.generator, tiny_models.real_score
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([0.3, 0.8])
    ids, mask = generator.condition(["top left red circle"] * 2)
    text = generator.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    fresh = M.Generator.from_prior(real_score, generator.text_encoder, generator.tokenizer)
    with torch.no_grad():
        assert torch.allclose(fresh(x, t, torch.randn_like(x), ids, mask),
                              M.velocity(real_score, x, t, text, mask), atol=1e-5)


# ----------------------------------------------------------------------------- the loop

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


def test_overrides_are_type_checked():
    with pytest.raises(SystemExit, match="unknown config key 'nope'"):
        train.parse_args(["--config", "tiny", "--nope=1"])
    with pytest.raises(SystemExit, match="wants a int"):
        train.parse_args(["--config", "tiny", "--max_steps=abc"])
    with pytest.raises(SystemExit, match="unknown config 'huge'"):
        train.parse_args(["--config", "huge"])
    with pytest.raises(SystemExit, match="--warmup_prompt must be caption or instruction"):
        train.parse_args(["--config", "tiny", "--warmup_prompt=target"])
    name, cfg = train.parse_args(["--config=tiny", "--lr=0.5", "--full_vocab=true"])
    assert name == "tiny" and cfg.lr == 0.5 and cfg.full_vocab is True


def test_warmup_prompt_is_the_caption_of_the_reference():
    """method.md: the identity warm-up's prompt is the caption of y, not the edit instruction."""
    import random
    _, cfg = train.parse_args(["--config", "tiny"])
    b = train.make_batches(cfg, random.Random(0), "cpu")(6)
    assert b.ref_captions == [tw.prompt(tw.parse(im)) for im in tw.to_uint8(b.ref)]
    assert b.captions == [tw.prompt(tw.parse(im)) for im in tw.to_uint8(b.target)]
    assert b.ref_captions != b.instructions


@pytest.mark.parametrize("prompt,is_caption", [("caption", True), ("instruction", False)])
def test_warmup_reads_the_chosen_prompt(prompt, is_caption, tmp_path, monkeypatch):
    """The warm-up loop conditions the editor on what --warmup_prompt names (captions end in
    ". background <bg>"; instructions never do)."""
    seen = []
    condition = M.Generator.condition
    monkeypatch.setattr(M.Generator, "condition",
                        lambda self, texts: seen.append(list(texts)) or condition(self, texts))
    train.main(["--config", "tiny", "--max_steps=0", "--eval_n=0", f"--warmup_prompt={prompt}",
                f"--out_dir={tmp_path}"])
    first = seen[0]  # the first warm-up step's batch
    assert all((" . background " in t) == is_caption for t in first), first


def test_cfg_by_type_sets_the_real_score_scale_per_sample():
    _, cfg = train.parse_args(["--config", "tiny", "--cfg=3", "--cfg_by_type=add=8,color=5"])
    assert train.cfg_scales(cfg, ["add", "shape", "color"]) == [8.0, 3.0, 5.0]
    with pytest.raises(SystemExit, match="TYPE=VALUE"):
        train.parse_args(["--config", "tiny", "--cfg_by_type=add8"])
    with pytest.raises(SystemExit, match="unknown edit type 'adds'"):
        train.parse_args(["--config", "tiny", "--cfg_by_type=adds=8"])


def test_type_mix_weights_the_training_edit_types():
    """--type_mix=add=1,color=0,...: every training edit is an addition (or "none"); the default
    mix draws all five types; bad specs are clear errors."""
    import random
    only_add = "add=1,color=0,remove=0,shape=0,background=0"
    for mix, want in ((only_add, {"add"}), ("", set(tw.EDIT_TYPES))):
        _, cfg = train.parse_args(["--config", "tiny", f"--type_mix={mix}", "--p_nothing=0"])
        b = train.make_batches(cfg, random.Random(0), "cpu")(200)
        assert set(b.types) == want
    with pytest.raises(SystemExit, match="unknown edit type 'adds'"):
        train.parse_args(["--config", "tiny", "--type_mix=adds=2"])
    for bad in ("add=-1", "add=0,color=0,remove=0,shape=0,background=0"):
        with pytest.raises(SystemExit, match=">= 0, not all 0"):
            train.parse_args(["--config", "tiny", f"--type_mix={bad}"])


def test_lr_schedule_holds_then_decays_over_decay_steps():
    """Linear warm-up over 20 steps; cosine over all max_steps, or held until the last
    decay_steps and cosine-decayed over those (warm-stable-decay); constant without cosine."""
    lr = lambda step, *a: train.lr_factor(step, train.parse_args(  # noqa: E731
        ["--config", "tiny", "--max_steps=100", *a])[1])
    assert lr(9, "--cosine=false") == pytest.approx(0.5) and lr(99, "--cosine=false") == 1.0
    assert lr(50, "--cosine=true") == pytest.approx(0.5)
    held = ("--cosine=true", "--decay_steps=40")
    assert lr(30, *held) == lr(60, *held) == 1.0
    assert lr(80, *held) == pytest.approx(0.5) and lr(100, *held) == pytest.approx(0.0)
    assert lr(80, "--cosine=true", "--decay_steps=1000") == lr(80, "--cosine=true")  # capped


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
    cfg = train.Config(**{**train.PRESETS["tiny"], "judge": str(tmp_path / "nope")})
    with pytest.raises(SystemExit, match="no judge at .*python pretrain.py judge"):
        train.load_models(cfg, "cpu")


@pytest.mark.parametrize("method,logged", [("sft", "sft "), ("grpo", "reward ")])
def test_baselines_run_through_the_same_loop(method, logged, tmp_path):
    r = _run([f"--out_dir={tmp_path}", f"--method={method}", "--max_steps=2"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"step 2/2 | {logged}" in r.stdout, r.stdout[-2000:]
    with pytest.raises(SystemExit, match="--method must be one of"):
        train.parse_args(["--config", "tiny", "--method=dpo"])
