"""Attacks on the small world's judge, and the adversarial training and noise augmentation
that resist them (docs/log.md, "The judge on v2": robustness).

attack: Adam on an image's pixels towards a chosen answer; attack_copies, robustness: the probe
that flips the edit question of unchanged references; adversarial_sample, adversarial:
unchanged references attacked during pretraining and trained on the true answer; noisy:
Gaussian-noise augmentation.
"""
import random

import torch

import toytext as tt
import toyworld as tw
import vlm_reward as V
from judge_data import grounding, soft_yes


def adversarial_sample(rng):
    """An unchanged reference asked the edit question (an edit's expected answer would be wrong),
    to be attacked by attack() while training: (images, question, answer, info)."""
    edit = tt.random_edit(rng, "pretrain")
    q, n_img, _ = V.edit_questions(edit.instruction, edit.type, edit.object)[0]
    yes = n_img == 1  # a removal's "does the image have <object>?": yes, still there
    return [edit.reference] * n_img, q, "yes" if yes else "no", \
        {"type": "edit_done", "kind": "adversarial", "target": edit.target,
         "ground": grounding([edit.reference] * n_img, next((e for e in edit.touched if e != "bg"), None))}


def attack(judge, images, questions, want_yes, steps=50, lr=0.01, keep=None):
    """The judge-fooling probe: Adam on the pixels of the LAST image of each question, pushing
    the answer to want_yes (e.g. "yes, the edit was done" for an unchanged reference). images:
    list of (B, 3, 32, 32) tensors in [-1, 1], one per image slot; keep: the earlier slots' fixed
    features. -> (perturbed last images (B, 3, 32, 32), l_yes - l_no after the attack)."""
    x = images[-1].clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    sign = torch.tensor([1.0 if w else -1.0 for w in want_yes])
    with torch.no_grad():
        fixed = [judge.image_features(im) for im in images[:-1]]
    for _ in range(steps):
        d, _ = judge.answer_logits(questions, fixed + [judge.image_features(x)])
        opt.zero_grad()
        (-sign * d).sum().backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(-1, 1)
    with torch.no_grad():
        d, _ = judge.answer_logits(questions, fixed + [judge.image_features(x)])
    return x.detach(), d


def attack_copies(judge, edits, steps=50, lr=0.01):
    """The probe's attack on edits' unchanged references, each asked its edit question (removal's
    "does the image have" included) and pushed towards the answer a done edit would get. ->
    (references (B, 3, 32, 32), attacked images, signed answers after the attack: + is "done")."""
    ref = tw.to_tensor([tw.render(e.reference) for e in edits])
    qs = [V.edit_questions(e.instruction, e.type, e.object)[0] for e in edits]
    x, done = ref.clone(), torch.zeros(len(edits))
    for n_img in (1, 2):
        idx = [b for b, q in enumerate(qs) if q[1] == n_img]
        if not idx:
            continue
        want = [qs[b][2] for b in idx]  # the answer of a done edit: yes, or "no, gone"
        x[idx], d = attack(judge, [ref[idx]] * n_img, [qs[b][0] for b in idx], want, steps, lr)
        done[idx] = d * torch.tensor([1.0 if w else -1.0 for w in want])
    return ref, x, done


def robustness(judge, n=200, steps=(50, 100), lr=0.01, seed=5):
    """Attack the edit question of n unchanged references (attack_copies; every edit type in
    turn). -> {steps: (flip rate: the share answering "done" after the attack; mean |dx| in 0-255
    levels; fooled: the share flipped while the oracle still reads the image as the unchanged
    reference; unreal: the share flipped while the oracle cannot read a cell of it)}."""
    rng = random.Random(seed)
    edits = [tt.random_edit(rng, "pretrain", tw.EDIT_TYPES[k % 5]) for k in range(n)]
    out = {}
    for k in steps:
        ref, x, done = attack_copies(judge, edits, k, lr)
        flip = (done > 0).tolist()
        read = [tw.parse(im) for im in tw.to_uint8(x)]
        fooled = sum(f and r == e.reference for f, r, e in zip(flip, read, edits))
        unreal = sum(f and tw.UNRECOGNISED in r.cells for f, r in zip(flip, read))
        dx = float((x - ref).abs().mean((1, 2, 3)).mean()) * 127.5
        out[k] = (sum(flip) / n, dx, fooled / n, unreal / n)
    return out


def adversarial(judge, batch, steps, lr, project=None):
    """Adversarial training (its hard negatives): the unchanged candidates of kind
    'adversarial' attacked (attack) towards the answer an edit would get; their
    labels stay the truth. project (a soft_yes mid): instead, each attacked image is answered
    by how far it moved along the edit asked for, alpha = <dx, target - reference> /
    |target - reference|^2 in [0, 1], as a partial edit at that alpha (judge_data.soft_yes), so
    that only the edit's own direction raises the answer (docs/log.md, "Where the attack's
    flips land"). -> {sample index: perturbed last image}."""
    idx = [b for b, s in enumerate(batch) if s[3].get("kind") == "adversarial"]
    out = {}
    for n_img in (1, 2):
        group = [b for b in idx if len(batch[b][0]) == n_img]
        if not group or not steps:
            continue
        judge.vlm.eval()
        images = [tw.to_tensor([tw.render(batch[b][0][j]) for b in group]) for j in range(n_img)]
        want = [batch[b][2] == "no" for b in group]  # push towards the wrong answer
        x, _ = attack(judge, images, [batch[b][1] for b in group], want, steps, lr)
        out.update(dict(zip(group, x)))
        # the edit question of adversarial_sample (judge_data's 'adversarial' candidates, which
        # may ask the identity question, keep the truth)
        mine = [j for j, b in enumerate(group) if "target" in batch[b][3]]
        if project is None or not mine:
            continue
        ref = images[-1][mine]
        v = tw.to_tensor([tw.render(batch[group[j]][3]["target"]) for j in mine]) - ref
        alpha = ((x[mine] - ref) * v).sum((1, 2, 3)) / (v * v).sum((1, 2, 3)).clamp(min=1e-6)
        for j, a in zip(mine, alpha.clamp(0, 1).tolist()):
            b, w = group[j], want[j]
            p = soft_yes(a, mid=project) if w else 1 - soft_yes(a, mid=project)  # w: "yes" = done
            imgs, q, _, info = batch[b]
            batch[b] = (imgs, q, "yes" if p > 0.5 else "no", {**info, "p_yes": p, "alpha": a})
    return out


def noisy(batch, perturbed, p):
    """Noise augmentation: with probability p a sample's last image gets Gaussian noise of a
    random std in [0, 0.15], so that noise itself (which an editor's outputs carry) is no cue."""
    for b, (imgs, *_) in enumerate(batch):
        if p and float(torch.rand(())) < p:  # torch's seeded stream: reproducible
            x = perturbed.get(b, tw.to_tensor([tw.render(imgs[-1])])[0])
            perturbed[b] = (x + 0.15 * float(torch.rand(())) * torch.randn_like(x)).clamp(-1, 1)
