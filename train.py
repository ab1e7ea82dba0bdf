"""NP-Edit training: an image editor learned without a single (input, target) pair.

    python train.py --config small                       # the small world, 2 CPU cores
    python train.py --config tiny --max_steps=2          # random tiny models, for tests
    python train.py --config base --data=edits.jsonl     # SANA 600M + Qwen2.5-VL-3B, one GPU
    torchrun --standalone --nproc_per_node=8 train.py --config large --data=edits.jsonl

Reads top to bottom (../shared/method.md): config (config.py) -> compute init -> models
(generator from the prior, frozen real score, fake score, frozen VLM judge) -> identity warm-up
("learn to copy") -> NP-Edit loop. Each generator step: unroll the editor (model.unroll),
L = w_vlm L_vlm (yes/no answers of the judge, vlm_reward.vlm_loss) + w_dmd L_dmd (dmd.dmd_loss)
+ the do-nothing MSE; then n_aux fake-score updates on the detached outputs. The editor never
sees a target image: targets exist only in the oracle that scores the evaluation, and in the
--method=sft baseline of the ablation issue. Real presets run the same loop in a VAE's latent
space (real.py): DMD on latents, the VLM on decoded pixels, gradients through the decoder.
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

import dmd
import model as M
import toyworld as tw
import vlm_reward as V
from checkpoint import load_checkpoint, load_editor, save_checkpoint  # noqa: F401 (re-export)
from config import PRESETS, Config, cfg_scales, parse_args, type_weights  # noqa: F401 (re-export)


def load_models(cfg, device):
    """-> namespace: generator (trainable), real_score (frozen), fake_score (trainable), judge
    (frozen); captions(texts, drop=None) -> frozen text features of c_x for both scores;
    to_latent(images) and to_pixels(x): the VAE of real presets, identity in the small world."""
    frozen = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if cfg.kind == "real":
        import real
        with torch.device(device if cfg.random_weights else "cpu"):  # (random init: on device)
            transformer, vae, text_encoder, tok = real.load_text_to_image(
                cfg.prior, cfg.tiny, cfg.resolution, key="prior", random_weights=cfg.random_weights)
            judge = real.load_vlm(cfg.judge, cfg.tiny, cfg.judge_size, key="judge",
                                  random_weights=cfg.random_weights)
        captions = real.TextCache(text_encoder.to(device, frozen).eval().requires_grad_(False), tok)
        generator = M.Generator.from_prior(transformer, None, tok, text_cache=captions)
        vae = vae.to(device).eval().requires_grad_(False)
        vae = vae.to(frozen) if frozen != torch.float32 else vae
        to_latent, to_pixels = (lambda im: real.vae_encode(vae, im)), (lambda x: real.vae_decode(vae, x))
    else:
        for what, path in (("prior", cfg.prior), ("judge", cfg.judge)):
            if path != "random" and not os.path.isdir(path):
                raise SystemExit(f"error: no {what} at {path}; make it with: python pretrain.py "
                                 f"{what} (or pass --{what}=PATH)")
        transformer, text_encoder, tok = M.small_prior(cfg.prior)
        judge = V.small_judge(cfg.judge)
        generator = M.Generator.from_prior(transformer, text_encoder, tok)
        text_encoder = text_encoder.to(device).eval().requires_grad_(False)

        @torch.no_grad()
        def captions(texts, drop=None):
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
            add_lora(m, cfg.lora_rank)
    return SimpleNamespace(generator=generator.to(device), real_score=real_score.to(device),
                           fake_score=fake_score.to(device), judge=judge, captions=captions,
                           to_latent=to_latent, to_pixels=to_pixels)


def add_lora(transformer, rank):
    """LoRA (peft) on the attention and feed-forward projections; the patch embedding, whose
    reference channels start at zero, stays fully trainable."""
    from peft import LoraConfig
    transformer.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                       target_modules=["to_q", "to_k", "to_v", "to_out.0",
                                                       "conv_inverted", "conv_point"]))
    transformer.patch_embed.requires_grad_(True)


def make_batches(cfg, rng, device):
    """-> next_batch(n): namespace of instructions, types, captions (c_x, the edited caption),
    ref_captions (the caption of y, the warm-up's prompt), ref (B, 3, R, R) pixels in [-1, 1],
    and target (rendered true target; small world only, read by the SFT baseline alone). Real
    presets read cfg.data (JSONL, real.read_jsonl); without it they use small-world scenes
    upscaled to the preset's resolution (a smoke test)."""
    records = None
    if cfg.kind == "real" and cfg.data:
        import real
        try:
            records = real.read_jsonl(cfg.data)
        except ValueError as e:
            raise SystemExit(f"error: {e}")
    w = type_weights(cfg)  # --type_mix ("" = uniform)

    def next_batch(n):
        if records is not None:
            recs = [rng.choice(records) for _ in range(n)]
            try:
                ref = torch.stack([real.load_image(r["image"], cfg.resolution) for r in recs])
            except ValueError as e:
                raise SystemExit(f"error: {e}")
            return SimpleNamespace(instructions=[r["instruction"] for r in recs],
                                   types=[r["type"] for r in recs], target=None,
                                   captions=[r["edited_caption"] for r in recs],
                                   ref_captions=[r.get("caption") or r["instruction"]
                                                 for r in recs],
                                   ref=ref.to(device))
        edits = [tw.random_edit(rng, "train", t) for t in
                 (rng.choices(tw.EDIT_TYPES, w, k=n) if w else [None] * n)]
        for b in range(n):
            if rng.random() < cfg.p_nothing:
                edits[b] = tw.apply_edit(edits[b].reference, "none")
        caption = tw.prompt if cfg.kind == "small" else tw.caption
        up = (lambda x: F.interpolate(x, size=cfg.resolution)) if cfg.resolution != 32 else (lambda x: x)
        return SimpleNamespace(
            instructions=[e.instruction for e in edits], types=[e.type for e in edits],
            captions=[caption(e.target) for e in edits],
            ref_captions=[caption(e.reference) for e in edits],
            ref=up(tw.to_tensor([tw.render(e.reference) for e in edits])).to(device),
            target=up(tw.to_tensor([tw.render(e.target) for e in edits])).to(device))
    return next_batch


def lr_factor(step, cfg, warmup=20):
    """Linear warm-up over 20 steps, then constant or (cfg.cosine) cosine decay to 0: over all
    max_steps, or (decay_steps > 0) held until the last decay_steps (warm-stable-decay)."""
    span = min(cfg.decay_steps or cfg.max_steps, cfg.max_steps)
    into = max(0, step - (cfg.max_steps - span))
    decay = 0.5 * (1 + math.cos(math.pi * into / span)) if cfg.cosine else 1.0
    return min(1.0, (step + 1) / warmup) * decay


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


def generator_losses(cfg, gen, S, b, step):
    """One NP-Edit generator step's forward: unroll the editor, then L_vlm, L_dmd and the
    do-nothing MSE. b: a batch of make_batches. Returns (x, (c_x, mask), l_vlm, l_dmd, l_nothing)."""
    nothing = torch.tensor([t == "none" for t in b.types], device=b.ref.device)
    text, mask = S.generator.condition(b.instructions)
    cap = S.captions(b.captions)  # c_x for both scores, and its null condition for CFG
    null = S.captions(b.captions, drop=torch.ones(len(b.captions), dtype=torch.bool))
    ref = S.to_latent(b.ref)
    k = random.Random(cfg.seed * 100_003 + step).randint(1, cfg.max_k)  # same on all ranks
    x = M.unroll(gen, ref, text, mask, k, shift=cfg.shift)  # with grad through both steps
    temp = min(1.0, 0.1 + 0.9 * step / cfg.vlm_temp_ramp) if cfg.vlm_temp_ramp else 1.0
    edit_ix = (~nothing).nonzero().flatten()
    l_vlm = x.sum() * 0
    if len(edit_ix) and cfg.w_vlm:
        pixels = S.to_pixels(x[edit_ix])  # real presets: decoded with gradient
        l_vlm = V.vlm_loss(S.judge, b.ref[edit_ix], pixels, [b.instructions[i] for i in edit_ix],
                           temperature=temp, full_vocab=cfg.full_vocab,
                           slots=(0, 1) if cfg.identity_question else (0,))
    l_dmd = x.sum() * 0
    if cfg.w_dmd:
        scales = cfg_scales(cfg, b.types)  # the real score's CFG, per sample
        l_dmd = dmd.dmd_loss(
            x, lambda xt, t: dmd.real_velocity(S.real_score, xt, t, *cap, *null, scales),
            lambda xt, t: M.velocity(S.fake_score, xt, t, *cap), t_min=cfg.dmd_t_min)
    l_nothing = F.mse_loss(x[nothing], ref[nothing]) if nothing.any() else x.sum() * 0
    return x, cap, l_vlm, l_dmd, l_nothing


def main(argv):
    name, cfg = parse_args(argv)
    # ---- compute init: DDP (or FSDP2) when launched by torchrun, one device otherwise
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
    master, fsdp = rank == 0, ddp and cfg.fsdp
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rng = random.Random(cfg.seed * world + rank)
    cuda = device.startswith("cuda")
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda \
        else contextlib.nullcontext
    print0 = print if master else (lambda *a, **k: None)
    os.makedirs(cfg.out_dir, exist_ok=True)
    t_start = time.time()

    # ---- models
    torch.manual_seed(cfg.seed)  # identical init on every rank
    S = load_models(cfg, device)
    generator, fake_score = S.generator, S.fake_score
    torch.manual_seed(cfg.seed * world + rank)  # per-rank seed (DiT)
    ema = copy.deepcopy(generator).eval().requires_grad_(False)
    if fsdp:  # shard every transformer block, then the rest; EMA sharded alike so lerp_ matches
        from torch.distributed.fsdp import fully_shard
        for m in (generator, ema, fake_score):
            for block in getattr(m, "transformer", m).transformer_blocks:
                fully_shard(block)
            fully_shard(m)
    gen_params = [p for p in generator.parameters() if p.requires_grad]  # LoRA: adapters only
    fake_params = [p for p in fake_score.parameters() if p.requires_grad]
    opt_w = torch.optim.AdamW(gen_params, lr=cfg.warmup_lr, weight_decay=0.0)
    opt_g = torch.optim.AdamW(gen_params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                              weight_decay=0.0)
    opt_f = torch.optim.AdamW(fake_params, lr=cfg.fake_lr,
                              betas=(cfg.beta1, cfg.beta2), weight_decay=0.0)
    modules = {"generator": generator, "ema": ema, "fake_score": fake_score}
    opts = {"warmup": (opt_w, generator), "generator": (opt_g, generator),
            "fake_score": (opt_f, fake_score)}
    ckpt = f"{cfg.out_dir}/ckpt"
    stage, step = "warmup", 0
    if os.path.exists(f"{ckpt}/state.json"):
        stage, step = load_checkpoint(ckpt, modules, opts, rng, fsdp)
        print0(f"resumed from {ckpt}: {stage} step {step}")
    gen, fake = generator, fake_score  # what the loop calls; raw modules kept for saving
    if ddp and not fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        gen = DDP(generator, device_ids=[device] if cuda else None)
        fake = DDP(fake_score, device_ids=[device] if cuda else None)
    if cuda and cfg.compile:
        gen, fake = torch.compile(gen), torch.compile(fake)
    next_batch = make_batches(cfg, rng, device)
    fixed = make_batches(cfg, random.Random(99), device)(8)  # the grids' inputs, every time

    def ema_update(decay):
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), generator.parameters()):
                pe.lerp_(p, 1 - decay)

    def clip_ok(params):
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        return bool(torch.isfinite(norm)) and float(norm) <= cfg.skip_grad_norm, float(norm)

    def save():  # all ranks call (FSDP gathers); rank 0 writes
        save_checkpoint(ckpt, stage, step, modules, opts, rng, cfg, rank, fsdp)

    def preview():  # before/after grid of the fixed inputs (all ranks compute under FSDP)
        x = M.sample_edit(ema, S.to_latent(fixed.ref), fixed.instructions, shift=cfg.shift,
                          clamp=cfg.kind == "small")
        with torch.no_grad():
            outs = tw.to_uint8(S.to_pixels(x))
        if master:
            tw.grid([list(tw.to_uint8(fixed.ref)), list(outs)],
                    scale=3 if cfg.resolution <= 64 else 1).save(f"{cfg.out_dir}/grid_{step:06d}.png")

    # ---- stage 1: identity warm-up, flow matching with the reference as the target
    t0 = time.time()
    while stage == "warmup" and step < cfg.warmup_steps:
        b = next_batch(cfg.batch_size)
        # method.md: prompt = the caption of y (--warmup_prompt=instruction: sessions 1-3)
        with autocast():
            ref = S.to_latent(b.ref)
            texts = b.ref_captions if cfg.warmup_prompt == "caption" else b.instructions
            loss = M.identity_loss(gen, ref, *generator.condition(texts), shift=cfg.shift)
        opt_w.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gen_params, cfg.grad_clip)
        opt_w.step()
        ema_update(0.9)
        step += 1
        if step % cfg.log_every == 0:
            print0(f"warmup {step}/{cfg.warmup_steps} | copy loss {loss.item():.4f} | "
                   f"{(time.time() - t0) / step * 1000:.0f} ms/step")
        if step % cfg.ckpt_every == 0:
            save()
    if stage == "warmup":
        stage, step = cfg.method, 0
        ema.load_state_dict(generator.state_dict())
        if master and cfg.kind == "small" and cfg.eval_n:
            warm = evaluate(ema, cfg, device, "warmup_only", cfg.out_dir)
            json.dump(warm, open(f"{cfg.out_dir}/warmup_metrics.json", "w"))
        save()

    # ---- stage 2: NP-Edit (or, for the ablation issue, a baseline with the same budget)
    t0, seen, step0 = time.time(), 0, step
    init = copy.deepcopy(generator).requires_grad_(False) if cfg.method == "grpo" else None
    while step < cfg.max_steps:
        if cfg.method == "grpo":  # groups: each edit repeated group_size times
            b = next_batch(cfg.batch_size // cfg.group_size)
            b = SimpleNamespace(**{k: [x for x in v for _ in range(cfg.group_size)]
                                   if isinstance(v, list) else v.repeat_interleave(
                                       cfg.group_size, 0) for k, v in vars(b).items()})
        else:
            b = next_batch(cfg.batch_size)
        logs = {}
        with autocast():
            if cfg.method == "npedit":
                x, cap, l_vlm, l_dmd, l_nothing = generator_losses(cfg, gen, S, b, step)
                loss = cfg.w_vlm * l_vlm + cfg.w_dmd * l_dmd + l_nothing
                logs = {"vlm": l_vlm.item(), "dmd": l_dmd.item()}
            elif cfg.method == "sft":  # true pairs: flow matching (reference, c) -> target
                loss = M.identity_loss(gen, S.to_latent(b.ref), *generator.condition(
                    b.instructions), shift=cfg.shift, target=S.to_latent(b.target))
                logs = {"sft": loss.item()}
            else:
                import grpo
                loss, logs = grpo.train_loss(gen, init, S, b, cfg.group_size, cfg.kl_coef,
                                             cfg.shift, clamp=cfg.kind == "small")
        if cfg.method == "npedit" and (step + 1) % cfg.log_every == 0 and master and not ddp:
            gx = [torch.autograd.grad(w * l, x, retain_graph=True, allow_unused=True)[0]
                  for w, l in ((cfg.w_vlm, l_vlm), (cfg.w_dmd, l_dmd))]  # each loss's pull
            logs.update({f"|dL/dx| {k}": 0.0 if g is None else g.norm().item()
                         for k, g in zip(("vlm", "dmd"), gx)})
        for g in opt_g.param_groups:
            g["lr"] = cfg.lr * lr_factor(step, cfg)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        ok, gnorm = clip_ok(gen_params)
        if ok:
            opt_g.step()
            ema_update(cfg.ema)
        else:
            print0(f"step {step}: skipped (loss {loss.item():.4g}, grad norm {gnorm:.4g})")
        if cfg.method == "npedit" and cfg.w_dmd:  # the fake score follows the generator
            xd = x.detach().float()
            for _ in range(cfg.n_aux):
                with autocast():
                    l_fake = dmd.fake_score_loss(fake, xd, *cap)
                opt_f.zero_grad(set_to_none=True)
                l_fake.backward()
                torch.nn.utils.clip_grad_norm_(fake_params, cfg.grad_clip)
                opt_f.step()
            logs["fake"] = l_fake.item()
        step += 1
        seen += len(b.instructions) * world
        if step % cfg.log_every == 0:
            dt = time.time() - t0
            print0(f"step {step}/{cfg.max_steps} | " + " ".join(f"{k} {v:.4g}" for k, v in
                                                                logs.items()) +
                   f" | gnorm {gnorm:.3f} | lr "
                   f"{opt_g.param_groups[0]['lr']:.1e} | {dt / (step - step0) * 1000:.0f} ms/step"
                   f" | {seen / dt:.1f} img/s")
        if step % cfg.grid_every == 0 or step == cfg.max_steps:
            if master or fsdp:
                preview()
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps and master \
                and cfg.kind == "small" and cfg.eval_n:
            evaluate(ema, cfg, device, f"step{step:06d}", cfg.out_dir)
        if step % cfg.ckpt_every == 0 or step == cfg.max_steps:
            save()

    # ---- final evaluation with the oracle (small world)
    if master and cfg.kind == "small" and cfg.eval_n:
        metrics = evaluate(ema, cfg, device, "final", cfg.out_dir)
        metrics["warmup_only"] = json.load(open(f"{cfg.out_dir}/warmup_metrics.json"))["overall"]
        json.dump(metrics, open(f"{cfg.out_dir}/metrics.json", "w"), indent=1)
        print(f"wrote {cfg.out_dir}/metrics.json | total {(time.time() - t_start) / 60:.1f} min")
    if ddp:  # DDP keeps replicas in sync; check it, cheaply, once
        flat = torch.cat([p.detach().full_tensor().flatten().float().cpu() if fsdp else
                          p.detach().flatten().float().cpu() for p in generator.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat.to(device))
        same = all(torch.equal(gathered[0].cpu(), g.cpu()) for g in gathered)
        print0(f"ranks hold identical weights: {same}")
        # gloo's worker thread frees finished collectives, which needs the GIL; tearing the
        # group down (DDP's reducer) while it does deadlocked ~1 run in 5, so let it drain first
        dist.barrier()
        time.sleep(1)
        del gen, fake
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
