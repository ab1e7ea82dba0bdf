"""Pretrain the small world's "foundation models" from scratch and write the shipped assets.

    python assets/small/pretrain.py prior     # the text-to-image prior  -> assets/small/prior/
    python assets/small/pretrain.py judge     # the VLM judge            -> assets/small/judge/

Shipped prior: the default command's, then `prior --init assets/small/prior --seed 1
--structured_steps 0 --steps 2000 --lr 3e-4 --warmup 50`; judge: a chain of fine-tunes with
adversarial training (--adv_n, --adv_project), noise (--noise), partial edits (--partial_n,
--soft_mid, --partial_wrong, --partial_fail) and candidate weights (--added_instead, --replaced);
docs/log.md ("The prior on captions", and from "The judge on v2" on; --pair_focus: "Judge z2").

NP-Edit needs a pretrained text-to-image flow model (generator init, real score, fake score init)
and a pretrained VLM. Nothing can be downloaded in the small world, so the repo trains tiny ones
on the procedural world (toyworld.py) and commits them; `train.py --config small` only loads them.
Progress bars; every --eval_every steps evals and an atomic write of the (EMA) weights; --resume.
"""
import argparse
import math
import os
import random
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

ASSETS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(ASSETS)))  # the repo's top level
import judge_data as J  # noqa: E402
import judge_robust as R  # noqa: E402
import model as M  # noqa: E402
import toytext as tt  # noqa: E402
import toyworld as tw  # noqa: E402
import vlm_reward as V  # noqa: E402
from checkpoint import atomic_save_dir  # noqa: E402


def heldout_prompt_scenes(n=256, seed=777):
    """The prior's held-out captions: n fixed scenes never used in its training."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        s = tw.random_scene(rng)
        if s not in out:
            out.append(s)
    return out


def prior_exact(transformer, text_encoder, tokenizer, scenes, cfg=3.0, steps=10, seed=0):
    """Fraction of prior samples whose oracle parse equals the scene of their structured prompt
    (toyworld.prompt)."""
    x = M.sample_prior(transformer, text_encoder, tokenizer, [tw.prompt(s) for s in scenes],
                       steps=steps, cfg=cfg, seed=seed)
    parsed = [tw.parse(im) for im in tw.to_uint8(x)]
    return sum(p == s for p, s in zip(parsed, scenes)) / len(scenes), x, parsed


def prior_captions(transformer, text_encoder, tokenizer, scenes, cfg=3.0, steps=40, seed=0):
    """The prior on captioners' captions (toytext.caption) of held-out scenes: the fraction of
    samples consistent with their caption and realistic, and of exact scenes when the caption is
    complete (every object named with its place). -> (consistent, exact). 40 Euler steps: with
    10, an object whose place the caption leaves open is often drawn as nothing (the average of
    its possible cells); docs/log.md, "The prior"."""
    rng = random.Random(seed)
    caps = [tt.caption(rng, s) for s in scenes] + [tt.caption(rng, s, detailed=True) for s in scenes]
    x = M.sample_prior(transformer, text_encoder, tokenizer, [c.text for c in caps], steps=steps,
                       cfg=cfg, seed=seed)
    ims = tw.to_uint8(x)
    n = len(scenes)
    ok = [tt.consistent(c, tw.parse(im)) and tw.is_realistic(im) for c, im in zip(caps[:n], ims)]
    exact = [tw.parse(im) == s for s, im in zip(scenes, ims[n:])]
    return sum(ok) / n, sum(exact) / n


def init_from(path, transformer, text_encoder, tokenizer):
    """Start from another prior: every weight, and the word embeddings of the words both
    tokenizers share (new words keep their random init)."""
    t, e, tok = M.load_prior(path)
    transformer.load_state_dict(t.state_dict())
    sd = e.state_dict()
    key = "embeddings.word_embeddings.weight"
    emb, old = text_encoder.state_dict()[key].clone(), tok.get_vocab()
    for w, i in tokenizer.get_vocab().items():
        if w in old:
            emb[i] = sd[key][old[w]]
    sd[key] = emb
    text_encoder.load_state_dict(sd)


def lr_at(step, total, lr, warmup):
    """Linear warm-up, then cosine decay to 10% of lr."""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def pretrain_prior(a):
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    out = a.out or os.path.join(ASSETS, "prior")
    state_path = os.path.join(a.state_dir, "prior_state.pt")
    tokenizer = tt.build_tokenizer()
    transformer, text_encoder = M.tiny_prior(len(tokenizer), width=a.width, layers=a.layers)
    if a.init:  # fine-tune an existing prior
        init_from(a.init, transformer, text_encoder, tokenizer)
    ema_t, ema_e = M.tiny_prior(len(tokenizer), width=a.width, layers=a.layers)
    ema_t.load_state_dict(transformer.state_dict())
    ema_e.load_state_dict(text_encoder.state_dict())
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
    step = 0
    if a.resume and os.path.exists(state_path):
        st = torch.load(state_path, map_location="cpu", weights_only=False)  # our own state file (holds a random.Random)
        for m, k in ((transformer, "t"), (text_encoder, "e"), (ema_t, "ema_t"), (ema_e, "ema_e")):
            m.load_state_dict(st[k])
        opt.load_state_dict(st["opt"])
        step, rng = st["step"], st["rng"]
        torch.set_rng_state(st["torch_rng"])
        print(f"resumed at step {step}")
    n_t = sum(p.numel() for p in transformer.parameters())
    n_e = sum(p.numel() for p in text_encoder.parameters())
    print(f"prior: transformer {n_t / 1e6:.2f}M, text encoder {n_e / 1e6:.2f}M params")
    held = heldout_prompt_scenes()[:a.eval_n]
    held_set = set(held)
    t0 = time.time()
    pbar = tqdm(total=a.steps, initial=step, desc="prior", dynamic_ncols=True)
    n1 = a.structured_steps  # phase 1: structured prompts only, which bind words to cells fast
    while step < a.steps:
        if step == n1 and n1:  # phase 2: captions too; restart from the EMA, a fresh optimizer
            transformer.load_state_dict(ema_t.state_dict())
            text_encoder.load_state_dict(ema_e.state_dict())
            opt = torch.optim.AdamW(params, lr=a.caption_lr, weight_decay=0.01)
        scenes = []
        while len(scenes) < a.batch:
            s = tw.random_scene(rng)
            if s not in held_set:
                scenes.append(s)
        x0 = tw.to_tensor([tw.render(s) for s in scenes])
        drop = torch.rand(a.batch) < a.cfg_dropout
        if step < n1:
            prompts = [tw.prompt(s) for s in scenes]
        else:  # captioners' captions (what c_y and c_x look like), the rest structured prompts
            prompts = [tt.caption(rng, s).text if rng.random() < a.captions else tw.prompt(s)
                       for s in scenes]
        text, mask = M.encode_text(text_encoder, tokenizer, prompts, drop)
        loss = M.flow_matching_loss(transformer, x0, text, mask)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, n1, a.lr, a.warmup) if step < n1 else \
                lr_at(step - n1, a.steps - n1, a.caption_lr if n1 else a.lr, a.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            for ema, m in ((ema_t, transformer), (ema_e, text_encoder)):
                for pe, p in zip(ema.parameters(), m.parameters()):
                    pe.lerp_(p, 1 - a.ema)
        step += 1
        pbar.update(1)
        pbar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
        if step % a.eval_every == 0 or step == a.steps:
            ema_t.eval()
            ema_e.eval()
            acc, x, _ = prior_exact(ema_t, ema_e, tokenizer, held, cfg=a.cfg)
            ok, exact = prior_captions(ema_t, ema_e, tokenizer, held, cfg=a.cfg)
            tqdm.write(f"step {step} | {(time.time() - t0) / 60:.1f} min | loss {loss.item():.4f}"
                       f" | on {len(held)} held-out scenes (CFG {a.cfg}): captions consistent "
                       f"and realistic {ok:.3f}, exact on complete captions {exact:.3f}, exact on"
                       f" structured prompts {acc:.3f}")
            atomic_save_dir(out, lambda d: M.save_prior(d, ema_t, ema_e, tokenizer))
            os.makedirs(a.state_dir, exist_ok=True)
            torch.save({"t": transformer.state_dict(), "e": text_encoder.state_dict(),
                        "ema_t": ema_t.state_dict(), "ema_e": ema_e.state_dict(),
                        "opt": opt.state_dict(), "step": step, "rng": rng,
                        "torch_rng": torch.get_rng_state()}, state_path + ".tmp")
            os.replace(state_path + ".tmp", state_path)
    pbar.close()


# ============================================================================= the judge
class GroundHeads(torch.nn.Module):
    """Linear heads on the judge's last hidden state at the yes/no answer position, trained to
    predict what the answer depends on (J.grounding()). Without them a yes/no about one cell, which
    needs the cell picked by the question's words AND its content compared with another word,
    stayed at chance for 3,000+ steps; with them "is the object at <cell> <colour> ?" went from
    0.53 to 0.87 in 200 steps (batch 32). Pretraining only; the shipped judge has no extra heads."""

    def __init__(self, width):
        super().__init__()
        n = len(tw.ALL_OBJECTS)
        self.present, self.bg = torch.nn.Linear(width, n), torch.nn.Linear(width, 3)
        self.cell, self.same = torch.nn.Linear(width, n + 1), torch.nn.Linear(width, 5)

    def loss(self, h, grounds):  # h (B, D) at the answer positions
        present = torch.tensor([g["present"] for g in grounds])
        loss = F.binary_cross_entropy_with_logits(self.present(h), present) + \
            F.cross_entropy(self.bg(h), torch.tensor([g["bg"] for g in grounds]))
        cell = torch.tensor([g["cell"] for g in grounds])
        if (cell != -100).any():
            loss = loss + F.cross_entropy(self.cell(h), cell, ignore_index=-100)
        two = [i for i, g in enumerate(grounds) if "same" in g]
        if two:
            same = torch.tensor([grounds[i]["same"] for i in two])
            loss = loss + F.binary_cross_entropy_with_logits(self.same(h[two]), same)
        return loss


class CellHeads(torch.nn.Module):
    """Auxiliary heads on the judge's merged visual tokens (one per cell): each token predicts
    its cell's content (empty or colour x shape) and which cell it is, the mean token the
    background. Used only in pretraining, so the vision tower learns objects fast (docs/log.md)."""

    def __init__(self, width):
        super().__init__()
        self.cell = torch.nn.Linear(width, 1 + len(tw.ALL_OBJECTS))
        self.bg = torch.nn.Linear(width, len(tw.BACKGROUNDS))
        self.pos = torch.nn.Linear(width, 4)

    def loss(self, feats, scenes):  # feats (B, 4, D)
        cell_y = torch.tensor([[0 if c is None else 1 + tw.ALL_OBJECTS.index(c) for c in s.cells]
                               for s in scenes])
        bg_y = torch.tensor([list(tw.BACKGROUNDS).index(s.bg) for s in scenes])
        pos_y = torch.arange(4).repeat(len(scenes))
        return F.cross_entropy(self.cell(feats).flatten(0, 1), cell_y.flatten()) + \
            F.cross_entropy(self.bg(feats.mean(1)), bg_y) + \
            F.cross_entropy(self.pos(feats).flatten(0, 1), pos_y)


def judge_batch_loss(judge, heads, batch, ground=None, perturbed=None):
    """Next-token loss on the answers (captions, instructions, yes/no) + the auxiliary heads on
    the visual tokens + (ground) the grounding heads at the yes/no answer positions.
    perturbed: {sample index: a (3, 32, 32) image replacing that sample's last image}."""
    scenes = [s for imgs, *_ in batch for s in imgs]
    x = tw.to_tensor([tw.render(s) for s in scenes])
    ends = torch.tensor([len(imgs) for imgs, *_ in batch]).cumsum(0) - 1
    for b, im in (perturbed or {}).items():
        x[ends[b]] = im
    feats = judge.image_features(x)
    texts = [judge.prompt(q, len(imgs), answer=a) for imgs, q, a, _ in batch]
    logits, mask, ids, hid = judge.forward(texts, [feats], hidden=True)
    n_prompt = [len(judge.tokenizer(judge.prompt(q, len(imgs))).input_ids) for imgs, q, _, _ in batch]
    labels = ids.masked_fill(mask == 0, -100)
    soft = [b for b, s in enumerate(batch) if 0 < s[3].get("p_yes", 0) < 1]
    for b, n in enumerate(n_prompt):
        labels[b, :n if b not in soft else None] = -100
    # mean over each sample's answer tokens, then over samples: a one-word yes/no answer weighs
    # as much as a 20-word caption (a token mean drowned the yes/no signal: chance after 9 min)
    tok_loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100,
                               reduction="none")
    n_ans = (labels[:, 1:] != -100).sum(1).clamp(min=1)
    lm = (tok_loss.sum(1) / n_ans).mean()
    if soft:  # partial edits: l_yes - l_no regressed onto the soft answer's logit (a BCE on
        # it left the answer flat near the copy, where its gradient vanishes: docs/log.md)
        pos = torch.tensor([n_prompt[b] - 1 for b in soft])
        at = logits[torch.tensor(soft), pos].float()
        p = torch.tensor([batch[b][3]["p_yes"] for b in soft])
        d = at[:, judge.yes_id] - at[:, judge.no_id]
        lm = lm + F.smooth_l1_loss(d, torch.log(p / (1 - p))) * len(soft) / len(batch)
    aux = heads.loss(feats, scenes)
    yn = [b for b, s in enumerate(batch) if "ground" in s[3]]
    if ground is not None and yn:
        pos = torch.tensor([n_prompt[b] - 1 for b in yn])
        aux = aux + ground.loss(hid[torch.tensor(yn), pos], [batch[b][3]["ground"] for b in yn])
    return lm, aux


def pretrain_judge(a):
    from transformers import Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    J.WEIGHTS = tuple(dict(zip(J.CANDIDATES, J.WEIGHTS), added_instead=a.added_instead,
                           replaced=a.replaced).values())
    out = a.out or os.path.join(ASSETS, "judge")
    state_path = os.path.join(a.state_dir, "judge_state.pt")
    tokenizer = J.judge_tokenizer()
    vlm = Qwen2_5_VLForConditionalGeneration(V.tiny_judge_config(tokenizer))
    if a.init:  # start from another judge: every weight, and the shared words' embeddings
        old = V.load_judge(a.init)
        sd, key = old.vlm.state_dict(), "model.language_model.embed_tokens.weight"
        emb, vocab = vlm.state_dict()[key].clone(), old.tokenizer.get_vocab()
        for w, i in tokenizer.get_vocab().items():
            if w in vocab:
                emb[i] = sd[key][vocab[w]]
        sd[key] = emb
        sd.pop("lm_head.weight", None)  # tied to the embeddings
        print(vlm.load_state_dict(sd, strict=False))
    judge = V.Judge(vlm, tokenizer)
    heads = CellHeads(vlm.config.text_config.hidden_size)
    ground = GroundHeads(vlm.config.text_config.hidden_size)
    params = list(vlm.parameters()) + list(heads.parameters()) + list(ground.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
    step = 0
    if a.resume and os.path.exists(state_path):
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        vlm.load_state_dict(st["vlm"])
        heads.load_state_dict(st["heads"])
        ground.load_state_dict(st["ground"])
        opt.load_state_dict(st["opt"])
        step, rng = st["step"], st["rng"]
        print(f"resumed at step {step}")
    print(f"judge: {sum(p.numel() for p in vlm.parameters()) / 1e6:.2f}M params")
    evalset = J.judge_eval_set(a.eval_n)
    held = {(q, tuple(imgs)) for imgs, q, _, _ in evalset}
    tasks, weights = ("caption", "change", "vqa", "single", "pair"), a.mix
    kinds, part = tuple(a.kinds), (a.soft_mid, a.partial_wrong, a.partial_fail, a.pair_focus)
    t0 = time.time()
    pbar = tqdm(total=a.steps, initial=step, desc="judge", dynamic_ncols=True)
    while step < a.steps:
        batch = []
        while len(batch) < a.batch:
            # curriculum: cell questions about 1, then 2, 3, 4 cells (one cell is learned in ~200
            # steps; all four at once stayed at chance for 3000+)
            cells = 4 if not a.curriculum else min(4, 1 + int(step / (a.curriculum * a.steps)))
            s = J.judge_sample(rng, rng.choices(tasks, weights)[0], kinds, cells, focus=a.pair_focus)
            if (s[1], tuple(s[0])) not in held:
                batch.append(s)
        batch += [R.adversarial_sample(rng) for _ in range(a.adv_n)]
        batch += [J.partial_sample(rng, *part) for _ in range(a.partial_n)]
        perturbed = R.adversarial(judge, batch, a.adv_steps, a.adv_lr, a.adv_project)
        J.blend(batch, perturbed)
        R.noisy(batch, perturbed, a.noise)
        vlm.train()
        lm, aux = judge_batch_loss(judge, heads, batch, ground, perturbed)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.steps, a.lr, a.warmup)
        opt.zero_grad(set_to_none=True)
        (lm + aux).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        pbar.update(1)
        pbar.set_postfix(lm=f"{lm.item():.3f}", aux=f"{aux.item():.3f}")
        if step % a.eval_every == 0 or step == a.steps:
            vlm.eval()
            acc = J.judge_accuracy(judge, evalset)
            rob = R.robustness(judge, n=a.probe_n, steps=(50,))[50] if a.probe_n else None
            tqdm.write(f"step {step} | {(time.time() - t0) / 60:.1f} min | lm {lm.item():.3f} "
                       f"aux {aux.item():.3f} | " + " ".join(f"{k} {v:.3f}" for k, v in acc.items())
                       + (f" | attack 50 steps: flipped {rob[0]:.3f} (fooled {rob[2]:.3f}, unreal {rob[3]:.3f}), mean |dx| {rob[1]:.1f}/255"
                          if rob else ""))
            atomic_save_dir(out, lambda d: (vlm.save_pretrained(d), tokenizer.save_pretrained(d)))
            os.makedirs(a.state_dir, exist_ok=True)
            torch.save({"vlm": vlm.state_dict(), "heads": heads.state_dict(), "ground": ground.state_dict(),
                        "opt": opt.state_dict(), "step": step, "rng": rng}, state_path + ".tmp")
            os.replace(state_path + ".tmp", state_path)
    pbar.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", choices=["prior", "judge"])
    p.add_argument("--steps", type=int, default=None, help="default: prior 7500, judge 6000")
    p.add_argument("--layers", type=int, default=2, help="prior: transformer blocks")
    p.add_argument("--width", type=int, default=128, help="prior: transformer width (32 per head)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--cfg_dropout", type=float, default=0.1)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--eval_every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="asset dir (default assets/small/<what>)")
    p.add_argument("--state_dir", default="out/pretrain")
    p.add_argument("--eval_n", type=int, default=1000,
                   help="judge: eval questions per side; prior: at most this many held-out prompts")
    p.add_argument("--kinds", nargs="+", default=list(J.SINGLE_Q), choices=list(J.SINGLE_Q),
                   help="judge: single-image question types to train on (a curriculum phase)")
    p.add_argument("--curriculum", type=float, default=0.0, help="judge: steps' share per cell")
    p.add_argument("--mix", type=float, nargs=5, default=(0.1, 0.1, 0.2, 0.25, 0.35),
                   help="judge: task weights caption change vqa single pair")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--adv_steps", type=int, default=0, help="judge: attack steps (0: none)")
    p.add_argument("--adv_lr", type=float, default=0.02, help="judge: the attack's lr")
    p.add_argument("--adv_n", type=int, default=0, help="judge: attacked references a batch")
    p.add_argument("--adv_project", type=float, default=None, help="judge: answer attacked "
                   "references as partial edits of this mid (judge_robust.adversarial)")
    p.add_argument("--partial_n", type=int, default=0, help="judge: partial edits a batch (soft answers)")
    p.add_argument("--soft_mid", type=float, default=0.5, help="judge: judge_data.soft_yes's mid")
    p.add_argument("--partial_wrong", type=float, default=0.0, help="judge: partial edits' wrong share")
    p.add_argument("--partial_fail", type=float, default=0.0, help="judge: partial edits' failure share")
    p.add_argument("--pair_focus", type=float, default=0.0, help="judge: 2-object colour/shape share")
    for kind in ("added_instead", "replaced"):  # candidate weights (judge_data.WEIGHTS)
        p.add_argument(f"--{kind}", type=float, default=dict(zip(J.CANDIDATES, J.WEIGHTS))[kind],
                       help=f"judge: the '{kind}' candidates' weight (judge_data.WEIGHTS)")
    p.add_argument("--noise", type=float, default=0.0, help="judge: share of images noised")
    p.add_argument("--probe_n", type=int, default=0, help="judge: references attacked at evals")
    p.add_argument("--init", default="", help="start from this prior or judge folder (fine-tune)")
    p.add_argument("--captions", type=float, default=0.75, help="prior, phase 2: captions' share")
    p.add_argument("--structured_steps", type=int, default=1500,
                   help="prior: phase 1, structured prompts only (0: no phase 1)")
    p.add_argument("--caption_lr", type=float, default=1e-3, help="prior: phase 2's peak lr")
    a = p.parse_args()
    a.steps = a.steps or {"prior": 7500, "judge": 6000}[a.what]
    torch.set_num_threads(a.threads)
    {"prior": pretrain_prior, "judge": pretrain_judge}[a.what](a)
