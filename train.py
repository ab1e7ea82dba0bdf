"""NP-Edit training: an image editor learned without a single (input, target) pair.

    python train.py --config small                       # the small world, 2 CPU cores
    python train.py --config tiny --max_steps=2          # random tiny models, for tests
    python train.py --config base --data=edits.jsonl     # SANA 600M + Qwen2.5-VL-3B, one GPU
    torchrun --standalone --nproc_per_node=8 train.py --config large --data=edits.jsonl

Top to bottom (docs/method.md): config -> compute init -> models (generator from the prior,
frozen real score, fake score, frozen VLM judge) -> the identity warm-up -> the NP-Edit loop,
one npedit_step a step: unroll the editor on (y, c), L = w_vlm L_vlm + w_dmd L_dmd (+ the
do-nothing MSE), one generator step, N_aux fake-score steps. The editor never sees a target
image: targets exist only in the oracle and in the SFT baseline (baselines.py). Real presets
run the same loop on a VAE's latents (real.py), the judge reading decoded pixels.
"""
import contextlib
import copy
import json
import math
import os
import random
import sys
import time
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.nn.functional as F

import baselines
import dmd
import eval as E
import model as M
import toytext as tt
import toyworld as tw
import vlm_reward as V
from checkpoint import (close_distributed, load_checkpoint, recover, replicas_identical,
                        save_checkpoint, shard)
from config import cfg_scales, lr_factor, parse_args, type_weights, vlm_weights


def load_models(cfg, device):
    """-> namespace: generator (trainable), real_score (frozen), fake_score (trainable), judge
    (frozen); caption_features(texts, drop=None) -> frozen text features of c_x for both scores;
    to_latent(images) and to_pixels(x): the VAE of real presets, identity in the small world."""
    frozen = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if cfg.kind == "real":
        import real
        transformer, generator, judge, caption_features, to_latent, to_pixels = \
            real.training_models(cfg, device, frozen)
    else:
        for what, path in (("prior", cfg.prior), ("judge", cfg.judge)):
            if path != "random" and not os.path.isdir(path):
                raise SystemExit(f"error: no {what} at {path}; make it with: python "
                                 f"assets/small/pretrain.py {what} (or pass --{what}=PATH)")
        transformer, text_encoder, tok = M.small_prior(cfg.prior)
        judge = V.small_judge(cfg.judge)
        generator = M.Generator.from_prior(transformer, text_encoder, tok,
                                           ref_init=cfg.ref_init)
        text_encoder = text_encoder.to(device).eval().requires_grad_(False)

        @torch.no_grad()
        def caption_features(texts, drop=None):
            return M.encode_text(text_encoder, tok, texts, drop)
        to_latent = to_pixels = (lambda x: x)
    fake_score = copy.deepcopy(transformer).train().requires_grad_(True)
    real_score = transformer.eval().requires_grad_(False)
    if frozen != torch.float32:  # frozen modules in bf16 on CUDA
        real_score, judge.vlm = real_score.to(frozen), judge.vlm.to(frozen)
    judge.vlm.to(device)
    for m in (generator.transformer, fake_score):
        if cfg.grad_ckpt:
            m.enable_gradient_checkpointing()
        if cfg.lora_rank:
            M.add_lora(m, cfg.lora_rank)
    return SimpleNamespace(generator=generator.to(device), real_score=real_score.to(device),
                           fake_score=fake_score.to(device), judge=judge,
                           caption_features=caption_features, to_latent=to_latent,
                           to_pixels=to_pixels)


def make_batches(cfg, rng, device):
    """-> next_batch(n): namespace of instructions c, types, objects (a removal's object),
    captions c_y (the warm-up's prompt), edited_captions c_x, reference y (B, 3, R, R) pixels in
    [-1, 1], and target (the rendered true target; small world only, read by the SFT baseline
    alone). The small world's come from toytext.random_edit (its training grammar, no held-out
    combination); real presets read cfg.data (real.jsonl_batches); without it they use small-world
    scenes upscaled to the preset's resolution (a smoke test)."""
    if cfg.kind == "real" and cfg.data:
        import real
        return real.jsonl_batches(cfg, rng, device)
    w = type_weights(cfg)  # --type_mix ("" = uniform)
    up = (lambda x: F.interpolate(x, size=cfg.resolution)) if cfg.resolution != 32 else (lambda x: x)

    def next_batch(n):
        edits = [tt.random_edit(rng, "train", t) for t in
                 (rng.choices(tw.EDIT_TYPES, w, k=n) if w else [None] * n)]
        for b in range(n):
            if rng.random() < cfg.p_nothing:
                edits[b] = tt.write(rng, tw.apply_edit(edits[b].reference, "none"))
        return SimpleNamespace(
            instructions=[e.instruction for e in edits], types=[e.type for e in edits],
            objects=[e.object for e in edits], captions=[e.caption for e in edits],
            edited_captions=[e.edited_caption for e in edits],
            reference=up(tw.to_tensor([tw.render(e.reference) for e in edits])).to(device),
            target=up(tw.to_tensor([tw.render(e.target) for e in edits])).to(device))
    return next_batch


def evaluate(generator, cfg, device, tag):
    """The oracle's scores on the fixed eval set (eval.oracle), printed; a grid eval_<tag>.png."""
    metrics = E.oracle(generator, cfg.eval_n, device, cfg.shift, f"{cfg.out_dir}/eval_{tag}.png")
    print(f"[{tag}] " + " | ".join(f"{t}: success {m['success']:.3f} pres {m['preservation']:.3f}"
                                  f" real {m['realism']:.3f}" for t, m in
                                  [("overall", metrics["overall"]), *metrics["by_type"].items()]))
    return metrics


# ----------------------------------------------------------------------------- NP-Edit's step

def vlm_temperature(cfg, step):
    """The reimplementation's ramp of the judge's logits, min(1, 0.1 + 0.9 step / ramp)
    (docs/method.md, "Loss 1"); 1 when vlm_temp_ramp is 0."""
    return min(1.0, 0.1 + 0.9 * step / cfg.vlm_temp_ramp) if cfg.vlm_temp_ramp else 1.0


def generator_losses(cfg, gen, S, b, step):
    """The forward of one generator step: unroll the editor on (y, c), then the loss terms.
    -> (x, c_x features, {"vlm": L_vlm, "dmd": L_dmd, "nothing": the do-nothing MSE})."""
    nothing = torch.tensor([t == "none" for t in b.types], device=b.reference.device)
    text, mask = S.generator.condition(b.instructions)
    cap = S.caption_features(b.edited_captions)  # c_x for both scores, and its null for CFG
    null = S.caption_features([""] * len(b.edited_captions),  # the empty condition, cheap
                              drop=torch.ones(len(b.edited_captions), dtype=torch.bool))
    ref = S.to_latent(b.reference)
    k = random.Random(cfg.seed * 100_003 + step).randint(1, cfg.max_k)  # same on all ranks
    x = M.unroll(gen, ref, text, mask, k, shift=cfg.shift)  # with grad through both steps
    zero = x.sum() * 0
    terms = {"vlm": zero, "dmd": zero, "nothing": zero}
    edit = (~nothing).nonzero().flatten().tolist()
    if edit and cfg.w_vlm:  # eq. L_vlm: the judge reads pixels (real presets: decoded, with grad)
        terms["vlm"] = V.vlm_loss(S.judge, b.reference[edit], S.to_pixels(x[edit]),
                                  *([getattr(b, f)[i] for i in edit] for f in
                                    ("instructions", "types", "objects")),
                                  temperature=vlm_temperature(cfg, step), full_vocab=cfg.full_vocab,
                                  slots=(0, 1) if cfg.identity_question else (0,),
                                  weights=vlm_weights(cfg, [b.types[i] for i in edit], step))
    if cfg.w_dmd:  # eq. L_dmd: real score with CFG (a scale per sample) vs the fake score, at c_x
        scales = cfg_scales(cfg, b.types)
        terms["dmd"] = dmd.dmd_loss(
            x, lambda xt, t: dmd.real_velocity(S.real_score, xt, t, *cap, *null, scales),
            lambda xt, t: M.velocity(S.fake_score, xt, t, *cap), t_min=cfg.dmd_t_min)
    if nothing.any():
        terms["nothing"] = F.mse_loss(x[nothing], ref[nothing])
    return x, cap, terms


def vlm_weight(cfg, step):
    """w_vlm at this step: constant, or (vlm_anneal < 1) linear down to vlm_anneal w_vlm at the
    last step, so that DMD has the last word on realism (docs/method.md, "Where this repo
    differs"; docs/log.md, "Why colour and removal stay low")."""
    return cfg.w_vlm * (1 + (cfg.vlm_anneal - 1) * step / max(1, cfg.max_steps - 1))


def total_loss(cfg, terms, step=0):
    """L = w_vlm L_vlm + w_dmd L_dmd + the do-nothing MSE (docs/method.md, "The total loss")."""
    return vlm_weight(cfg, step) * terms["vlm"] + cfg.w_dmd * terms["dmd"] + terms["nothing"]


def fake_score_steps(T, x, cap):
    """N_aux flow-matching steps of the fake score on the generator's detached outputs, so it
    keeps tracking their distribution (docs/method.md, "Loss 2"). -> the last loss."""
    xd = x.detach().float()
    for _ in range(T.cfg.n_aux):
        with T.autocast():
            loss = dmd.fake_score_loss(T.fake, xd, *cap)
        T.opt_f.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(T.fake_params, T.cfg.grad_clip)
        T.opt_f.step()
    return loss.item()


def npedit_step(T, next_batch, step):
    """One NP-Edit step: generator losses, one generator update, N_aux fake-score updates."""
    cfg = T.cfg
    b = next_batch(cfg.batch_size)
    with T.autocast():
        x, cap, terms = generator_losses(cfg, T.gen, T.S, b, step)
        loss = total_loss(cfg, terms, step)
    logs = {"vlm": terms["vlm"].item(), "dmd": terms["dmd"].item()}
    if (step + 1) % cfg.log_every == 0 and not T.ddp:  # how hard each loss pulls on x
        for k, w in (("vlm", vlm_weight(cfg, step)), ("dmd", cfg.w_dmd)):
            g = torch.autograd.grad(w * terms[k], x, retain_graph=True, allow_unused=True)[0]
            logs[f"|dL/dx| {k}"] = 0.0 if g is None else g.norm().item()
    logs.update(T.update(loss, step))
    if cfg.w_dmd:
        logs["fake"] = fake_score_steps(T, x, cap)
    return logs, len(b.instructions)


def warmup_step(T, next_batch, step):
    """The identity warm-up ("learn to copy", docs/method.md "Warm-up"): flow matching whose
    target is y itself (model.identity_loss), prompted with the caption of y."""
    b = next_batch(T.cfg.batch_size)
    with T.autocast():
        texts = b.captions if T.cfg.warmup_prompt == "caption" else b.instructions
        loss = M.identity_loss(T.gen, T.S.to_latent(b.reference),
                               *T.S.generator.condition(texts), shift=T.cfg.shift)
    T.opt_w.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(T.gen_params, T.cfg.grad_clip)
    T.opt_w.step()
    T.ema_update(0.9)
    return {"copy loss": loss.item()}, len(b.instructions)


def adamw(params, lr, betas=(0.9, 0.999)):
    """AdamW without weight decay, fused: one kernel for all tensors (the same update as the
    per-tensor loop, a few ms a step cheaper on a CPU)."""
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=0.0, fused=True)


STEPS = {"npedit": npedit_step, "sft": baselines.sft_step, "grpo": baselines.grpo_step}


def main(argv):
    name, cfg = parse_args(argv)
    # ---- compute init: DDP (or FSDP2) when launched by torchrun, one device otherwise
    ddp = int(os.environ.get("RANK", -1)) != -1
    cuda = torch.cuda.is_available()
    if ddp:
        dist.init_process_group("nccl" if cuda else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}" if cuda else "cpu"
    else:
        rank, world, device = 0, 1, "cuda" if cuda else "cpu"
    if ddp and cuda:
        torch.cuda.set_device(device)
    master, fsdp = rank == 0, ddp and cfg.fsdp
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rng = random.Random(cfg.seed * world + rank)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda \
        else contextlib.nullcontext
    print0 = print if master else (lambda *a, **k: None)
    os.makedirs(cfg.out_dir, exist_ok=True)
    t_start = time.time()

    # ---- models and optimizers
    torch.manual_seed(cfg.seed)  # identical init on every rank
    S = load_models(cfg, device)
    generator, fake_score = S.generator, S.fake_score
    torch.manual_seed(cfg.seed * world + rank)  # per-rank seed (DiT)
    ema = copy.deepcopy(generator).eval().requires_grad_(False)
    if fsdp:  # EMA sharded alike, so that lerp_ matches
        shard(generator, ema, fake_score)
    gen_params = [p for p in generator.parameters() if p.requires_grad]  # LoRA: adapters only
    fake_params = [p for p in fake_score.parameters() if p.requires_grad]
    betas = (cfg.beta1, cfg.beta2)
    opt_w = adamw(gen_params, lr=cfg.warmup_lr)
    opt_g = adamw(gen_params, lr=cfg.lr, betas=betas)
    opt_f = adamw(fake_params, lr=cfg.fake_lr, betas=betas)
    modules = {"generator": generator, "ema": ema, "fake_score": fake_score}
    opts = {"warmup": (opt_w, generator), "generator": (opt_g, generator),
            "fake_score": (opt_f, fake_score)}
    ckpt = recover(f"{cfg.out_dir}/ckpt")  # (a kill mid-swap leaves the last one in ckpt.old)
    stage, step = "warmup", 0
    if os.path.exists(f"{ckpt}/state.json"):
        stage, step = load_checkpoint(ckpt, modules, opts, rng, fsdp)
        if stage not in ("warmup", cfg.method):  # a finished warm-up is any method's start
            if step:
                raise SystemExit(f"error: {ckpt} is a --method={stage} run at step {step}, "
                                 f"not --method={cfg.method}; use another --out_dir")
            stage = cfg.method
        print0(f"resumed from {ckpt}: {stage} step {step}")
    gen, fake = generator, fake_score  # what the loop calls; raw modules kept for saving
    if ddp and not fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        gen, fake = (DDP(m, device_ids=[device] if cuda else None) for m in (generator, fake_score))
    if cuda and cfg.compile:
        gen, fake = torch.compile(gen), torch.compile(fake)
    next_batch = make_batches(cfg, rng, device)
    fixed = make_batches(cfg, random.Random(99), device)(8)  # the grids' inputs, every time

    def ema_update(decay):
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(generator.parameters()), 1 - decay)

    def update(loss, step):
        """One generator step at the scheduled lr: backward, clip, skip a step whose gradient
        norm is not finite or above skip_grad_norm, EMA. -> its log entries."""
        for g in opt_g.param_groups:
            g["lr"] = cfg.lr * lr_factor(step, cfg)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(gen_params, cfg.grad_clip))
        if math.isfinite(gnorm) and gnorm <= cfg.skip_grad_norm:
            opt_g.step()
            ema_update(cfg.ema)
        else:
            print0(f"step {step}: skipped (loss {loss.item():.4g}, grad norm {gnorm:.4g})")
        return {"gnorm": gnorm, "lr": opt_g.param_groups[0]["lr"]}

    T = SimpleNamespace(cfg=cfg, S=S, gen=gen, fake=fake, opt_w=opt_w, opt_f=opt_f,
                        gen_params=gen_params, fake_params=fake_params, autocast=autocast,
                        update=update, ema_update=ema_update, ddp=ddp)

    def save():  # all ranks call (FSDP gathers); rank 0 writes
        save_checkpoint(ckpt, stage, step, modules, opts, rng, cfg, rank, fsdp)

    def preview():  # before/after grid of the fixed inputs (all ranks compute under FSDP)
        x = M.sample_edit(ema, S.to_latent(fixed.reference), fixed.instructions, shift=cfg.shift,
                          clamp=cfg.kind == "small")
        with torch.no_grad():
            outs = tw.to_uint8(S.to_pixels(x))
        if master:
            tw.grid([list(tw.to_uint8(fixed.reference)), list(outs)],
                    scale=3 if cfg.resolution <= 64 else 1).save(f"{cfg.out_dir}/grid_{step:06d}.png")

    # ---- the loop: the identity warm-up, then NP-Edit (or a baseline of baselines.py)
    t0, seen, step0 = time.time(), 0, step
    while True:
        total = cfg.warmup_steps if stage == "warmup" else cfg.max_steps
        if step >= total and stage != "warmup":
            break
        if step >= total:  # the warm-up's end: the EMA starts from the copying editor
            stage, step = cfg.method, 0
            ema.load_state_dict(generator.state_dict())
            if master and cfg.kind == "small" and cfg.eval_n:
                json.dump(evaluate(ema, cfg, device, "warmup_only"),
                          open(f"{cfg.out_dir}/warmup_metrics.json", "w"))
            save()
            t0, seen, step0 = time.time(), 0, 0
            continue
        logs, n = (warmup_step if stage == "warmup" else STEPS[stage])(T, next_batch, step)
        step += 1
        seen += n * world
        if step % cfg.log_every == 0:
            dt = time.time() - t0
            print0(f"{'warmup' if stage == 'warmup' else 'step'} {step}/{total} | " +
                   " ".join(f"{k} {v:.4g}" for k, v in logs.items()) +
                   f" | {dt / (step - step0) * 1000:.0f} ms/step | {seen / dt:.1f} img/s")
        if stage != "warmup" and (step % cfg.grid_every == 0 or step == total) and (master or fsdp):
            preview()
        if stage != "warmup" and cfg.eval_every and step % cfg.eval_every == 0 and step < total \
                and master and cfg.kind == "small" and cfg.eval_n:
            evaluate(ema, cfg, device, f"step{step:06d}")
        if step % cfg.ckpt_every == 0 or (stage != "warmup" and step == total):
            save()
    if step > step0:
        print0(f"trained {step - step0} steps at {(time.time() - t0) / (step - step0) * 1000:.0f}"
               f" ms/step")

    # ---- final evaluation with the oracle (small world)
    if master and cfg.kind == "small" and cfg.eval_n:
        metrics = evaluate(ema, cfg, device, "final")
        metrics["warmup_only"] = json.load(open(f"{cfg.out_dir}/warmup_metrics.json"))["overall"]
        json.dump(metrics, open(f"{cfg.out_dir}/metrics.json", "w"), indent=1)
    print0(f"total {(time.time() - t_start) / 60:.1f} min" +
           (f" | wrote {cfg.out_dir}/metrics.json" if cfg.kind == "small" and cfg.eval_n else ""))
    if ddp:  # DDP keeps replicas in sync; check it, cheaply, once
        print0(f"ranks hold identical weights: {replicas_identical(generator, device, fsdp)}")
        del gen, fake, T
        close_distributed()


if __name__ == "__main__":
    main(sys.argv[1:])
