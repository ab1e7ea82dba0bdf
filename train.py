"""NP-Edit training: an image editor learned without a single (input, target) pair.

    python train.py --config small                       # the small world, ~15 min on 2 CPU cores
    python train.py --config tiny --max_steps=2          # random tiny models, for tests
    torchrun --standalone --nproc_per_node=2 train.py --config tiny --max_steps=2

Reads top to bottom (../shared/method.md): config -> compute init -> models (generator from the
prior, frozen real score, fake score, frozen VLM judge) -> identity warm-up ("learn to copy") ->
NP-Edit loop. Each generator step: unroll the editor (model.unroll), L = w_vlm L_vlm (yes/no
answers of the judge, vlm_reward.vlm_loss) + w_dmd L_dmd (dmd.dmd_loss) + the do-nothing MSE;
then n_aux fake-score updates on the detached outputs. The editor never sees a target image:
targets exist only inside the oracle that scores the final evaluation.
"""
import contextlib
import copy
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, fields

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import dmd
import model as M
import toyworld as tw
import vlm_reward as V


@dataclass
class Config:
    prior: str = "assets/small/prior"   # a folder written by pretrain.py, or "random" (tiny)
    judge: str = "assets/small/judge"   # likewise
    out_dir: str = ""                    # default out/<config>
    seed: int = 0
    batch_size: int = 16
    warmup_steps: int = 300              # identity warm-up ("learn to copy") steps
    warmup_lr: float = 1e-3
    max_steps: int = 600                 # NP-Edit generator steps
    lr: float = 2e-4                     # generator
    fake_lr: float = 2e-4                # fake score
    beta1: float = 0.0                   # AdamW betas (0, 0.9), as the reimplementation
    beta2: float = 0.9
    n_aux: int = 5                       # fake-score updates per generator step
    w_vlm: float = 1.0
    w_dmd: float = 1.0
    cfg: float = 3.0                     # real score CFG scale
    p_nothing: float = 0.01              # "do nothing" samples with an MSE(x0, y) term
    max_k: int = 4                       # unroll: k ~ U{1..max_k} of the 4-step schedule
    shift: float = 1.0                   # time shift of the 4-step schedule
    vlm_temp_ramp: int = 0               # steps of the temperature ramp 0.1 -> 1 (0: off)
    full_vocab: bool = False             # ablation: full-vocabulary CE instead of yes/no BCE
    identity_question: bool = True      # ablation: drop the "same except" question
    ema: float = 0.99
    grad_clip: float = 2.0
    skip_grad_norm: float = 300.0        # skip a step whose grad norm exceeds this
    log_every: int = 25
    grid_every: int = 200
    ckpt_every: int = 200
    eval_n: int = 500                    # fixed seeded oracle eval set at the end (0: none)
    threads: int = 0                     # torch CPU threads (0: torch's default)


PRESETS = {
    # random tiny models built from config; seconds on a CPU; for tests
    "tiny": dict(prior="random", judge="random", batch_size=4, warmup_steps=2, max_steps=3,
                 n_aux=2, log_every=1, grid_every=2, ckpt_every=2, eval_n=10),
    # the shipped small-world prior and judge; measured on 2 CPU cores: 7.1 min, success 0.236,
    # preservation 0.932, realism 0.672 on 500 eval edits (not yet the training issue's bar)
    "small": dict(warmup_steps=200, max_steps=400, n_aux=3, w_vlm=0.02),
}


def parse_args(argv):
    """--config NAME, then --key=value overrides, type-checked against Config."""
    name, over = "small", {}
    types = {f.name: f.type for f in fields(Config)}
    it = iter(argv)
    for a in it:
        if a == "--config":
            name = next(it, None)
            continue
        if a.startswith("--config="):
            name = a.split("=", 1)[1]
            continue
        if not a.startswith("--") or "=" not in a:
            raise SystemExit(f"error: expected --config NAME or --key=value, got {a!r}")
        k, v = a[2:].split("=", 1)
        if k not in types:
            raise SystemExit(f"error: unknown config key {k!r}; known: {', '.join(types)}")
        typ = {"int": int, "float": float, "str": str, "bool": bool}[types[k]] \
            if isinstance(types[k], str) else types[k]
        try:
            if typ is bool:
                if v.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                over[k] = v.lower() in ("true", "1")
            else:
                over[k] = typ(v)
        except ValueError:
            raise SystemExit(f"error: --{k} wants a {typ.__name__}, got {v!r}")
    if name not in PRESETS:
        raise SystemExit(f"error: unknown config {name!r}; choose from {', '.join(PRESETS)}")
    cfg = Config(**{**PRESETS[name], **over})
    cfg.out_dir = cfg.out_dir or f"out/{name}"
    return name, cfg


def prior_of(cfg):
    """(transformer, text_encoder, tokenizer): the shipped prior, or a random tiny one."""
    if cfg.prior != "random":
        return M.load_prior(cfg.prior)
    tok = tw.build_tokenizer()
    return (*M.tiny_prior(len(tok), width=32, layers=1, text_width=32, text_layers=1), tok)


def load_models(cfg, device):
    """-> generator (trainable), real score (frozen), fake score (trainable), text encoder for
    captions (frozen), prior tokenizer, judge (frozen)."""
    for what, path in (("prior", cfg.prior), ("judge", cfg.judge)):
        if path != "random" and not os.path.isdir(path):
            raise SystemExit(f"error: no {what} at {path}; make it with: python pretrain.py {what}"
                             f" (or pass --{what}=PATH)")
    transformer, text_encoder, tok = prior_of(cfg)
    if cfg.judge == "random":
        from judge_data import judge_tokenizer
        jt = judge_tokenizer()
        vlm = V.Qwen2_5_VLForConditionalGeneration(V.tiny_judge_config(jt, 32, 32, 1))
        judge = V.Judge(vlm.eval().requires_grad_(False), jt)
    else:
        judge = V.load_judge(cfg.judge)
    generator = M.Generator.from_prior(transformer, text_encoder, tok)
    real_score = transformer.eval().requires_grad_(False)
    fake_score = M.use_softmax_attention(copy.deepcopy(transformer)).train().requires_grad_(True)
    text_encoder.eval().requires_grad_(False)
    judge.vlm.to(device)
    return (generator.to(device), real_score.to(device), fake_score.to(device),
            text_encoder.to(device), tok, judge)


def lr_factor(step, warmup=20):
    return min(1.0, (step + 1) / warmup)


def save_checkpoint(path, stage, step, generator, ema, fake_score, opts, rng, cfg):
    """safetensors for weights and optimizer moments, JSON for config and loop state; written to
    a temp folder and renamed, so a kill never leaves a broken checkpoint."""
    def write(d):
        os.makedirs(d)
        tensors = {**{f"generator.{k}": v for k, v in generator.state_dict().items()},
                   **{f"ema.{k}": v for k, v in ema.state_dict().items()},
                   **{f"fake_score.{k}": v for k, v in fake_score.state_dict().items()},
                   "rng.torch": torch.get_rng_state()}
        save_file({k: v.contiguous() for k, v in tensors.items()}, f"{d}/model.safetensors")
        torch.save({k: o.state_dict() for k, o in opts.items()}, f"{d}/optim.pt")
        json.dump({"stage": stage, "step": step, "config": asdict(cfg),
                   "rng.python": rng.getstate()}, open(f"{d}/state.json", "w"))
    M.atomic_save_dir(path, write)


def load_checkpoint(path, generator, ema, fake_score, opts, rng):
    w = load_file(f"{path}/model.safetensors")
    for prefix, m in (("generator.", generator), ("ema.", ema), ("fake_score.", fake_score)):
        m.load_state_dict({k[len(prefix):]: v for k, v in w.items() if k.startswith(prefix)})
    torch.set_rng_state(w["rng.torch"])
    for k, sd in torch.load(f"{path}/optim.pt", map_location="cpu").items():
        if k in opts:
            opts[k].load_state_dict(sd)
    st = json.load(open(f"{path}/state.json"))
    v, state, gauss = st["rng.python"]
    rng.setstate((v, tuple(state), gauss))
    return st["stage"], st["step"]


def load_editor(path, device="cpu"):
    """The EMA editor of a run: path is its out_dir or its ckpt folder. -> (generator, Config).
    Raises FileNotFoundError / ValueError with a one-line reason for a missing or foreign one."""
    ckpt = path if os.path.exists(f"{path}/state.json") else f"{path}/ckpt"
    if not os.path.exists(f"{ckpt}/state.json") or not os.path.exists(f"{ckpt}/model.safetensors"):
        raise FileNotFoundError(f"no checkpoint in {path!r} (expected {ckpt}/state.json and "
                                "model.safetensors; train one with: python train.py --config small)")
    try:
        st = json.load(open(f"{ckpt}/state.json"))
        cfg = Config(**st["config"])
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{ckpt}/state.json is not a checkpoint of this repo ({e})")
    transformer, text_encoder, tok = prior_of(cfg)
    generator = M.Generator.from_prior(transformer, text_encoder, tok)
    w = load_file(f"{ckpt}/model.safetensors")
    try:
        generator.load_state_dict({k[4:]: v for k, v in w.items() if k.startswith("ema.")})
    except RuntimeError as e:
        raise ValueError(f"{ckpt} does not match its preset's model ({str(e).splitlines()[0]})")
    return generator.to(device).eval(), cfg


def editor_fn(generator, device, shift):
    """-> edit_fn(PIL references, instructions) -> uint8 images, for toyworld.evaluate."""
    def edit(refs, instructions):
        x = M.sample_edit(generator, tw.to_tensor(refs).to(device), instructions, shift=shift)
        return list(tw.to_uint8(x))
    return edit


def evaluate(generator, cfg, device, tag, out_dir):
    edits = tw.eval_edits(cfg.eval_n)
    generator.eval()
    metrics, images = tw.evaluate(editor_fn(generator, device, cfg.shift), edits)
    generator.train()
    print(f"[{tag}] " + " | ".join(f"{t}: success {m['success']:.3f} pres {m['preservation']:.3f}"
                                  f" real {m['realism']:.3f}" for t, m in
                                  [("overall", metrics["overall"]), *metrics["by_type"].items()]))
    tw.grid([[tw.render(e.reference) for e in edits[:16]], images[:16],
             [tw.render(e.target) for e in edits[:16]]]).save(f"{out_dir}/eval_{tag}.png")
    return metrics


def edited_captions(text_encoder, tok, edits):
    """c_x (the prior's prompt of the edited scene) and its null condition, for both scores."""
    with torch.no_grad():
        captions = [tw.prompt(e.target) for e in edits]
        cap, cap_mask = M.encode_text(text_encoder, tok, captions)
        null, null_mask = M.encode_text(text_encoder, tok, captions,
                                        drop=torch.ones(len(edits), dtype=torch.bool))
    return cap, cap_mask, null, null_mask


def generator_losses(cfg, gen, judge, real_score, fake_score, text_encoder, tok, edits, ref, step):
    """One NP-Edit generator step's forward: unroll the editor, then L_vlm, L_dmd and the
    do-nothing MSE. Returns (x, c_x, c_x mask, l_vlm, l_dmd, l_nothing)."""
    instructions = [e.instruction for e in edits]
    nothing = torch.tensor([e.type == "none" for e in edits], device=ref.device)
    ids, mask = M.tokenize(tok, instructions, ref.device)  # the generator's tokenizer is tok
    cap, cap_mask, null, null_mask = edited_captions(text_encoder, tok, edits)
    k = random.Random(cfg.seed * 100_003 + step).randint(1, cfg.max_k)  # same on all ranks
    x = M.unroll(gen, ref, ids, mask, k, shift=cfg.shift)  # (B, 3, 32, 32), with grad
    temp = min(1.0, 0.1 + 0.9 * step / cfg.vlm_temp_ramp) if cfg.vlm_temp_ramp else 1.0
    edit_ix = (~nothing).nonzero().flatten()
    l_vlm = V.vlm_loss(judge, ref[edit_ix], x[edit_ix], [instructions[i] for i in edit_ix],
                       temperature=temp, full_vocab=cfg.full_vocab,
                       slots=(0, 1) if cfg.identity_question else (0,)) \
        if len(edit_ix) else x.sum() * 0
    l_dmd = dmd.dmd_loss(
        x, lambda xt, t: dmd.real_velocity(real_score, xt, t, cap, cap_mask, null, null_mask,
                                           cfg.cfg),
        lambda xt, t: M.velocity(fake_score, xt, t, cap, cap_mask))
    l_nothing = F.mse_loss(x[nothing], ref[nothing]) if nothing.any() else x.sum() * 0
    return x, cap, cap_mask, l_vlm, l_dmd, l_nothing


def main(argv):
    name, cfg = parse_args(argv)
    # ---- compute init: DDP when launched by torchrun, one device otherwise
    ddp = int(os.environ.get("RANK", -1)) != -1
    if ddp:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        rank, world = dist.get_rank(), dist.get_world_size()
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}" if backend == "nccl" else "cpu"
        if backend == "nccl":
            torch.cuda.set_device(device)
    else:
        rank, world = 0, 1
        device = "cuda" if torch.cuda.is_available() else "cpu"
    master = rank == 0
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed * world + rank)  # per-rank seed (DiT)
    rng = random.Random(cfg.seed * world + rank)
    cuda = device.startswith("cuda")
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda \
        else contextlib.nullcontext
    print0 = print if master else (lambda *a, **k: None)
    os.makedirs(cfg.out_dir, exist_ok=True)
    t_start = time.time()

    # ---- models
    torch.manual_seed(cfg.seed)  # identical init on every rank
    generator, real_score, fake_score, text_encoder, tok, judge = load_models(cfg, device)
    torch.manual_seed(cfg.seed * world + rank)
    ema = copy.deepcopy(generator).eval().requires_grad_(False)
    opt_w = torch.optim.AdamW(generator.parameters(), lr=cfg.warmup_lr, weight_decay=0.0)
    opt_g = torch.optim.AdamW(generator.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                              weight_decay=0.0)
    opt_f = torch.optim.AdamW(fake_score.parameters(), lr=cfg.fake_lr,
                              betas=(cfg.beta1, cfg.beta2), weight_decay=0.0)
    opts = {"warmup": opt_w, "generator": opt_g, "fake_score": opt_f}
    ckpt = f"{cfg.out_dir}/ckpt"
    stage, step = "warmup", 0
    if os.path.exists(f"{ckpt}/state.json"):
        stage, step = load_checkpoint(ckpt, generator, ema, fake_score, opts, rng)
        print0(f"resumed from {ckpt}: {stage} step {step}")
    gen, fake = generator, fake_score  # what the loop calls; raw modules kept for saving
    if ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        gen = DDP(generator, device_ids=[device] if cuda else None)
        fake = DDP(fake_score, device_ids=[device] if cuda else None)
    if cuda:
        gen, fake = torch.compile(gen), torch.compile(fake)

    def batch_of_edits():
        edits = [tw.random_edit(rng, "train") for _ in range(cfg.batch_size)]
        for b in range(len(edits)):
            if rng.random() < cfg.p_nothing:
                edits[b] = tw.apply_edit(edits[b].reference, "none")
        ref = tw.to_tensor([tw.render(e.reference) for e in edits]).to(device)
        return edits, ref

    def ema_update(decay):
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), generator.parameters()):
                pe.lerp_(p, 1 - decay)

    def sync_grads_ok(params):
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        return bool(torch.isfinite(norm)) and float(norm) <= cfg.skip_grad_norm, float(norm)

    # ---- stage 1: identity warm-up, flow matching with the reference as the target
    t0 = time.time()
    while stage == "warmup" and step < cfg.warmup_steps:
        edits, ref = batch_of_edits()
        # the instruction as the prompt (the paper uses the caption of y): the tiny text encoder
        # then meets instructions from the first step, and the editor learns to copy under them
        ids, mask = generator.tokenize([e.instruction for e in edits])
        with autocast():
            loss = M.identity_loss(gen, ref, ids, mask, shift=cfg.shift)
        opt_w.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(generator.parameters(), cfg.grad_clip)
        opt_w.step()
        ema_update(0.9)
        step += 1
        if step % cfg.log_every == 0 and master:
            print(f"warmup {step}/{cfg.warmup_steps} | copy loss {loss.item():.4f} | "
                  f"{(time.time() - t0) / step * 1000:.0f} ms/step")
        if step % cfg.ckpt_every == 0 and master:
            save_checkpoint(ckpt, stage, step, generator, ema, fake_score, opts, rng, cfg)
    if stage == "warmup":
        stage, step = "npedit", 0
        ema.load_state_dict(generator.state_dict())
        if master:
            warm = evaluate(ema, cfg, device, "warmup_only", cfg.out_dir) if cfg.eval_n else None
            json.dump(warm, open(f"{cfg.out_dir}/warmup_metrics.json", "w"))
            save_checkpoint(ckpt, stage, step, generator, ema, fake_score, opts, rng, cfg)

    # ---- stage 2: NP-Edit
    t0, seen, step0 = time.time(), 0, step
    while step < cfg.max_steps:
        edits, ref = batch_of_edits()
        with autocast():
            x, cap, cap_mask, l_vlm, l_dmd, l_nothing = generator_losses(
                cfg, gen, judge, real_score, fake_score, text_encoder, tok, edits, ref, step)
        loss = cfg.w_vlm * l_vlm + cfg.w_dmd * l_dmd + l_nothing
        gx = [float("nan")] * 2
        if (step + 1) % cfg.log_every == 0 and master and not ddp:  # each loss's pull on pixels
            gx = [torch.autograd.grad(w * l, x, retain_graph=True, allow_unused=True)[0]
                  for w, l in ((cfg.w_vlm, l_vlm), (cfg.w_dmd, l_dmd))]
            gx = [0.0 if g is None else g.norm().item() for g in gx]
        for g in opt_g.param_groups:
            g["lr"] = cfg.lr * lr_factor(step)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        ok, gnorm = sync_grads_ok(generator.parameters())
        if ok:
            opt_g.step()
            ema_update(cfg.ema)
        else:
            print0(f"step {step}: skipped (loss {loss.item():.4g}, grad norm {gnorm:.4g})")
        # the fake score follows the generator's current outputs
        xd = x.detach().float()
        for _ in range(cfg.n_aux):
            with autocast():
                l_fake = dmd.fake_score_loss(fake, xd, cap, cap_mask)
            opt_f.zero_grad(set_to_none=True)
            l_fake.backward()
            torch.nn.utils.clip_grad_norm_(fake_score.parameters(), cfg.grad_clip)
            opt_f.step()
        step += 1
        seen += len(edits) * world
        if step % cfg.log_every == 0 and master:
            dt = time.time() - t0
            print(f"step {step}/{cfg.max_steps} | vlm {l_vlm.item():.4f} dmd {l_dmd.item():.5f} "
                  f"fake {l_fake.item():.4f} | |dL/dx| vlm {gx[0]:.2e} dmd {gx[1]:.2e} | "
                  f"gnorm {gnorm:.3f} | lr {opt_g.param_groups[0]['lr']:.1e}"
                  f" | {dt / (step - step0) * 1000:.0f} ms/step | {seen / dt:.1f} img/s")
        if master and (step % cfg.grid_every == 0 or step == cfg.max_steps):
            fixed = tw.eval_edits(8, seed=99)
            outs = editor_fn(ema, device, cfg.shift)([tw.render(e.reference) for e in fixed],
                                                     [e.instruction for e in fixed])
            tw.grid([[tw.render(e.reference) for e in fixed], outs]).save(
                f"{cfg.out_dir}/grid_{step:06d}.png")
        if master and (step % cfg.ckpt_every == 0 or step == cfg.max_steps):
            save_checkpoint(ckpt, stage, step, generator, ema, fake_score, opts, rng, cfg)

    # ---- final evaluation with the oracle
    if master and cfg.eval_n:
        metrics = evaluate(ema, cfg, device, "final", cfg.out_dir)
        metrics["warmup_only"] = json.load(open(f"{cfg.out_dir}/warmup_metrics.json"))["overall"]
        json.dump(metrics, open(f"{cfg.out_dir}/metrics.json", "w"), indent=1)
        print(f"wrote {cfg.out_dir}/metrics.json | total {(time.time() - t_start) / 60:.1f} min")
    if ddp:  # DDP keeps replicas in sync; check it, cheaply, once
        flat = torch.cat([p.detach().flatten().float().cpu() for p in generator.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat.to(device))
        same = all(torch.equal(gathered[0].cpu(), g.cpu()) for g in gathered)
        print0(f"ranks hold identical weights: {same}")
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
