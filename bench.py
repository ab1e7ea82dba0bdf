"""Time one NP-Edit iteration and each of its parts alone (a benchmark, not a test); on CUDA
also peak memory and MFU from counted FLOPs.

    python bench.py                                        # small preset, 2 CPU threads
    python bench.py --config base --tiny=True              # the real presets' path, tiny twins
    python bench.py --config base --tiny=True --device cuda --compile   # GPU: bf16 + compile
    python bench.py --config base --device cuda --compile  # the real SANA + Qwen, if cached

Parts: the frozen caption features of c_x and its null condition; generator unroll forward +
backward; real + fake score passes (dmd_loss, no grad inside); VLM forward + backward (through
the VAE decoder on real presets); the generator's AdamW step; the n_aux fake-score updates.
Prints each part's ms and the full iteration over the sum of the parts (no wasted passes: close
to 1). Any other --key=value is a config override (config.py).
"""
import argparse
import contextlib
import random
import time

import torch

import dmd
import model as M
import train
import vlm_reward as V
from config import parse_args


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="small")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile generator and fake score")
    p.add_argument("--peak_tflops", type=float, default=989.0,
                   help="the accelerator's dense bf16 peak, for MFU (H100/H200 SXM: 989)")
    a, overrides = p.parse_known_args()
    torch.set_num_threads(a.threads)
    _, cfg = parse_args(["--config", a.config, *overrides])
    cuda = a.device.startswith("cuda")
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda \
        else contextlib.nullcontext
    torch.manual_seed(0)
    S = train.load_models(cfg, a.device)
    generator, fake_score = S.generator, S.fake_score
    gen, fake = (torch.compile(generator), torch.compile(fake_score)) if a.compile \
        else (generator, fake_score)
    opt_g = train.adamw([q for q in generator.parameters() if q.requires_grad], lr=1e-7)
    opt_f = train.adamw([q for q in fake_score.parameters() if q.requires_grad], lr=1e-7)
    b = train.make_batches(cfg, random.Random(0), a.device)(cfg.batch_size)
    text, mask = generator.condition(b.instructions)
    cap = S.caption_features(b.edited_captions)
    drop = torch.ones(cfg.batch_size, dtype=torch.bool)  # the empty condition, as train.py
    null = S.caption_features([""] * cfg.batch_size, drop=drop)
    ref = S.to_latent(b.reference)
    with torch.no_grad(), autocast():
        x_fixed = M.unroll(gen, ref, text, mask, 2, shift=cfg.shift).float()

    def captions():
        S.caption_features(b.edited_captions)
        S.caption_features([""] * cfg.batch_size, drop=drop)

    def unroll():
        opt_g.zero_grad()
        with autocast():
            loss = M.unroll(gen, ref, text, mask, 2, shift=cfg.shift).float().square().mean()
        loss.backward()

    def scores():
        with autocast():
            dmd.dmd_loss(x_fixed, lambda xt, t: dmd.real_velocity(S.real_score, xt, t, *cap, *null,
                                                                   cfg.cfg),
                         lambda xt, t: M.velocity(fake, xt, t, *cap))

    def vlm():
        x = x_fixed.clone().requires_grad_(True)
        with autocast():
            loss = V.vlm_loss(S.judge, b.reference, S.to_pixels(x), b.instructions, b.types, b.objects)
        loss.backward()

    def adamw_step():
        opt_g.step()  # on the grads the unroll part left

    def fake_updates(x=x_fixed, c=cap):
        for _ in range(cfg.n_aux):
            opt_f.zero_grad()
            with autocast():
                loss = dmd.fake_score_loss(fake, x, *c)
            loss.backward()
            opt_f.step()

    def iteration():
        step = 2 * cfg.max_k  # any step whose k is max_k (2 generator passes, as unroll above)
        while random.Random(cfg.seed * 100_003 + step).randint(1, cfg.max_k) != cfg.max_k:
            step += 1
        with autocast():
            x, c, terms = train.generator_losses(cfg, gen, S, b, step)
            loss = train.total_loss(cfg, terms)
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
        fake_updates(x.detach().float(), c)

    def timed(fn):
        fn()  # warm-up (and compilation)
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(a.iters):
            fn()
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t) / a.iters * 1000

    parts = {"caption features (c_x, null)": captions,
             "generator unroll fwd+bwd (k=2)": unroll, "real+fake score passes": scores,
             "VLM fwd+bwd": vlm, "generator AdamW step": adamw_step,
             f"{cfg.n_aux} fake-score updates": fake_updates}
    ms = {k: timed(f) for k, f in parts.items()}
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    total = timed(iteration)
    print(f"config {a.config}{' (tiny twins)' if cfg.tiny else ''}, batch {cfg.batch_size}, "
          f"{cfg.resolution} px, device {a.device}{', compiled' if a.compile else ''}, "
          f"{a.iters} iters")
    for k, v in ms.items():
        print(f"  {k:34s} {v:8.1f} ms")
    print(f"  {'sum of parts':34s} {sum(ms.values()):8.1f} ms")
    print(f"  {'one NP-Edit iteration':34s} {total:8.1f} ms  "
          f"(ratio {total / sum(ms.values()):.2f}, target <= 1.2)")
    if cuda:
        from torch.utils.flop_counter import FlopCounterMode
        S.judge.vlm.set_attn_implementation("eager")  # the counter cannot count SDPA with
        with FlopCounterMode(display=False) as fc:    # fewer KV heads than query heads
            iteration()
        flops = fc.get_total_flops()
        print(f"  peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB | "
              f"{flops / 1e12:.3f} TFLOP per iteration | MFU "
              f"{flops / (total / 1000) / (a.peak_tflops * 1e12) * 100:.2f}% of "
              f"{a.peak_tflops:.0f} TFLOP/s ({torch.cuda.get_device_name()})")
    n = lambda m: sum(q.numel() for q in m.parameters())  # noqa: E731
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    for name, m, o in (("generator", generator, opt_g), ("fake score", fake_score, opt_f)):
        moments = [v for st in o.state.values() for v in st.values() if torch.is_tensor(v)]
        grads = [q.grad for q in m.parameters() if q.grad is not None]
        print(f"  {name} training state: {nbytes([*m.parameters(), *grads, *moments]) / n(m):.1f}"
              f" bytes/param (weights + grads + AdamW moments; the EMA adds 4 for the generator)")
    print(f"  parameters: generator {n(generator) / 1e6:.2f}M (trainable "
          f"{sum(q.numel() for q in generator.parameters() if q.requires_grad) / 1e6:.2f}M), "
          f"fake score {n(fake_score) / 1e6:.2f}M, judge {n(S.judge.vlm) / 1e6:.2f}M")


if __name__ == "__main__":
    main()
