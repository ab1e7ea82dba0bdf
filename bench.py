"""Time one NP-Edit iteration and each of its parts alone (a benchmark, not a test).

    python bench.py                      # small preset, 2 CPU threads
    python bench.py --config tiny --iters 3

Parts: generator unroll forward + backward; real + fake score passes (dmd_loss, no grad inside);
VLM forward + backward; the n_aux fake-score updates. Prints each part's ms and the full
iteration over the sum of the parts (no wasted passes: close to 1).
"""
import argparse
import random
import time

import torch

import dmd
import model as M
import train
import vlm_reward as V


def timed(fn, iters):
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters * 1000


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="small")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--judge", default=None, help="override the judge path (or 'random')")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    _, cfg = train.parse_args(["--config", a.config] + ([f"--judge={a.judge}"] if a.judge else []))
    torch.manual_seed(0)
    S = train.load_models(cfg, "cpu")
    generator, real_score, fake_score, judge = S.generator, S.real_score, S.fake_score, S.judge
    opt_g = torch.optim.AdamW(generator.parameters(), lr=1e-6)
    opt_f = torch.optim.AdamW(fake_score.parameters(), lr=1e-6)
    b = train.make_batches(cfg, random.Random(0), "cpu")(cfg.batch_size)
    ref, instr = b.ref, b.instructions
    ids, mask = generator.condition(instr)
    cap, cap_mask = S.captions(b.captions)
    null, null_mask = S.captions(b.captions, drop=torch.ones(len(instr), dtype=torch.bool))
    x_fixed = M.unroll(generator, ref, ids, mask, 2).detach()

    def unroll():
        opt_g.zero_grad()
        M.unroll(generator, ref, ids, mask, 2).square().mean().backward()

    def scores():
        dmd.dmd_loss(x_fixed, lambda xt, t: dmd.real_velocity(real_score, xt, t, cap, cap_mask, null,
                                                               null_mask, cfg.cfg),
                     lambda xt, t: M.velocity(fake_score, xt, t, cap, cap_mask))

    def vlm():
        x = x_fixed.clone().requires_grad_(True)
        V.vlm_loss(judge, ref, x, instr).backward()

    def fake_updates():
        for _ in range(cfg.n_aux):
            opt_f.zero_grad()
            dmd.fake_score_loss(fake_score, x_fixed, cap, cap_mask).backward()
            opt_f.step()

    def iteration():
        step = 2 * cfg.max_k  # any step whose k is max_k (so the unroll above matches)
        while random.Random(cfg.seed * 100_003 + step).randint(1, cfg.max_k) != cfg.max_k:
            step += 1
        x, cap_, l_vlm, l_dmd, l_nothing = train.generator_losses(cfg, generator, S, b, step)
        opt_g.zero_grad()
        (cfg.w_vlm * l_vlm + cfg.w_dmd * l_dmd + l_nothing).backward()
        opt_g.step()
        xd = x.detach()
        for _ in range(cfg.n_aux):
            opt_f.zero_grad()
            dmd.fake_score_loss(fake_score, xd, *cap_).backward()
            opt_f.step()

    parts = {"generator unroll fwd+bwd (k=2)": unroll, "real+fake score passes": scores,
             "VLM fwd+bwd": vlm, f"{cfg.n_aux} fake-score updates": fake_updates}
    ms = {k: timed(f, a.iters) for k, f in parts.items()}
    total = timed(iteration, a.iters)
    print(f"config {a.config}, batch {cfg.batch_size}, {a.threads} threads, {a.iters} iters")
    for k, v in ms.items():
        print(f"  {k:34s} {v:8.1f} ms")
    print(f"  {'sum of parts':34s} {sum(ms.values()):8.1f} ms")
    print(f"  {'one NP-Edit iteration':34s} {total:8.1f} ms  "
          f"(ratio {total / sum(ms.values()):.2f}, target <= 1.2)")


if __name__ == "__main__":
    main()
