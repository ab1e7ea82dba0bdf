"""Why a small-world run falls short: the measurements behind docs/log.md's analysis.

    python docs/diagnose.py out/small     # a run's out_dir (needs its ckpt, with the fake score)
    python docs/diagnose.py --judge assets/small/judge   # the judge alone (judge_slope)
    python docs/diagnose.py --attack <judge> [<judge> ...]   # docs/judge_attack.png (attack_grid)
    python docs/diagnose.py --failures out/small   # what the run did with each eval edit (failure_kinds)
    python docs/diagnose.py --phrasing out/small   # one-object recolours worded 7 ways (phrasing)

Prints, per edit type, on 48 training-split edits each (seeded):
  dmd    cosine between the DMD descent direction x0_real - x0_fake (dmd.py, the run's own fake
         score, real-score CFG 3 and 8) and target - x at the editor's outputs x, and its norm,
         at t = 0.3, 0.5, 0.7, 0.9: is the signal there, and does it point at the edit?
  cell   mean |x - reference| inside the cell the edit touches vs inside untouched cells (what
         the oracle target needs in that cell, for scale): does the editor act where asked?
  real   why outputs fail realism: the share whose parse has an unrecognised cell, and the mean
         error to the rendering of their own parse on object vs background pixels.
  speckle  that error's std in [-1, 1] units and its correlation between two sampler seeds:
         noise the sampler injects, or a pattern the editor draws for this input?
  judge  where the judge's L_vlm gradient w.r.t. the pixels points, at the unchanged reference
         and halfway to the target: its share of squared mass in the touched cell (a quarter
         is chance) and its cosine with target - x. Is there a direction to start an edit?
and, on the 500 eval edits, each type's success split by what the editor never trained on (a
held-out colour x shape combination in the scene, toyworld.HELDOUT_COMBOS; the held-out grammar)
and by whether the instruction names the object's place or only its colour or shape.
"""
import copy
import dataclasses
import os
import random
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo
import dmd  # noqa: E402
import model as M  # noqa: E402
import toytext as tt  # noqa: E402
import toyworld as tw  # noqa: E402
import vlm_reward as V  # noqa: E402
from checkpoint import load_editor  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "assets", "small"))
import judge_data as J  # noqa: E402


def edits_of(typ, n, seed=1):
    rng = random.Random(seed)
    return [tt.random_edit(rng, "train", typ) for _ in range(n)]


def mean(values):
    return f"{np.mean(values):.3f}" if len(values) else "-"


def cell_slice(k):
    x, y = tw.CELL_XY[k]
    return (slice(None), slice(y, y + tw.CELL), slice(x, x + tw.CELL))


def cell_response(x, ref, tgt, edits):
    """Per cell, mean |x - ref|: -> (touched cells, what the target needs there, untouched cells)
    as lists; a background edit touches every cell."""
    touched, need, other = [], [], []
    for i, e in enumerate(edits):
        for k in range(4):
            diff = (x[i][cell_slice(k)] - ref[i][cell_slice(k)]).abs().mean().item()
            if k in e.touched or "bg" in e.touched:
                touched.append(diff)
                need.append((tgt[i][cell_slice(k)] - ref[i][cell_slice(k)]).abs().mean().item())
            else:
                other.append(diff)
    return touched, need, other


def realism_breakdown(images):
    """uint8 images -> (how many parse with an unrecognised cell, per other image the mean error
    to the rendering of its own parse on object pixels, and on background pixels)."""
    unrec, obj_err, bg_err = 0, [], []
    for im in images:
        p = tw.parse(im)
        if tw.UNRECOGNISED in p.cells:
            unrec += 1
            continue
        r = np.asarray(tw.render(p), np.float32)
        bg = np.all(r == np.asarray(tw.render(tw.Scene(p.bg, (None,) * 4)), np.float32), -1)
        err = np.abs(np.asarray(im, np.float32) - r).mean(-1) / 255
        bg_err.append(err[bg].mean())
        if (~bg).any():
            obj_err.append(err[~bg].mean())
    return unrec, obj_err, bg_err


def speckle(gen, ref, instructions, shift):
    """Is the realism error fresh noise or a pattern fixed by the input? The residuals
    r = x - render(parse(x)) of two sampler seeds, on pixels away from the clamp (|x| < 0.95) and
    from wrong shapes (|r| < 0.5): -> (their correlation: 0 noise, 1 a pattern; r's std), or
    (None, None) when no output parses."""
    rs = []
    for seed in (0, 1):
        x = M.sample_edit(gen, ref, instructions, shift=shift, seed=seed)
        parses = [tw.parse(im) for im in tw.to_uint8(x)]
        ok = torch.tensor([tw.UNRECOGNISED not in p.cells for p in parses])[:, None, None, None]
        r = torch.stack([x[i] - tw.to_tensor([tw.render(p)])[0] if ok[i] else 0 * x[i]
                         for i, p in enumerate(parses)])  # an unrecognised cell: no rendering
        rs.append((r, ok & (x.abs() < 0.95) & (r.abs() < 0.5)))
    (a, ma), (b, mb) = rs
    m = ma & mb
    if m.sum() < 2:  # nothing parses (an untrained editor)
        return None, None
    return torch.corrcoef(torch.stack([a[m], b[m]]))[0, 1].item(), a[m].std().item()


def heldout_split(edit_fn, n=500):
    """Success per edit type on the first n eval edits, split by whether the scene holds a
    held-out combination, by whether the instruction uses the held-out grammar, and by whether
    it names a place ("place": a cell word, as in "the object at top right"; else the object is
    named by colour or shape only), and by whether the editor must find it among two by its
    colour or shape ("described"). Prints, and returns {split: {type: (success without, success
    with, n with)}}."""
    edits = tt.eval_edits(n)
    _, images = tw.evaluate(edit_fn, edits)
    ok = [tw.score_edit(e, im)["success"] for e, im in zip(edits, images)]
    places = [w for words in tt.CELL_WORDS.values() for w in words]
    show = lambda v: "-" if np.isnan(v) else f"{v:.3f}"  # noqa: E731  (a side with no edits)
    place = lambda e: any(w in e.instruction for w in places)  # noqa: E731
    splits = {"combo": tw.has_heldout_combo, "grammar": lambda e: e.heldout_grammar,
              "place": place,  # and the object to find by its description alone:
              "described": lambda e: len(e.reference.objects()) > 1 and not place(e)}
    out = {}
    for name, held in splits.items():
        out[name] = {}
        for typ in ("all",) + tw.EDIT_TYPES:
            rows = [(held(e), s) for e, s in zip(edits, ok) if typ in ("all", e.type)]
            new = [s for h, s in rows if h]
            old = [s for h, s in rows if not h]
            out[name][typ] = (np.mean(old) if old else np.nan, np.mean(new) if new else np.nan,
                              len(new))
        head = {"place": "without / with a place word", "described": "other / two objects, the "
                "edited one named without a place word"}.get(name, f"trained / held-out {name}")
        print(f"success, {head} (n with): " + " | ".join(
            f"{t} {show(a)} / {show(b)} ({k})" for t, (a, b, k) in out[name].items()))
    return out


def judge_direction(judge, ref, tgt, edits):
    """-> per point (reference, halfway): (share of -dL_vlm/dx's squared mass in the touched
    cells, formatted, "-" for background edits; its cosine with target - x)."""
    out = []
    for x0 in (ref, 0.5 * ref + 0.5 * tgt):
        x = x0.clone().requires_grad_(True)
        with torch.enable_grad():
            g, = torch.autograd.grad(V.vlm_loss(judge, ref, x, [e.instruction for e in edits],
                                                    [e.type for e in edits], [e.object for e in edits]), x)
        cells = [[k for k in range(4) if k in e.touched] for e in edits]
        mass = [sum(g[i][cell_slice(k)].square().sum() for k in c) / g[i].square().sum()
                for i, c in enumerate(cells) if c and "bg" not in edits[i].touched]
        cos = F.cosine_similarity(-g.flatten(1), (tgt - x0).flatten(1)).mean()
        out.append((f"{np.mean(mass):.2f}" if mass else "-", cos.item()))
    return out


def judge_slope(path, n=16):
    """Per edit type, on n training-split edits: judge_direction, and the judge's signed answer
    (+: the answer a done edit gets) to the edit question along the pixel blend from the
    reference (alpha 0) to the target (alpha 1), and at the same type of edit done wrong (another
    cell or value: judge_data's "wrong edit"). A flat start means no direction at the copy; a
    wrong edit that scores like the target means no direction towards the value asked for. Then
    target_answers on the eval edits."""
    judge = V.small_judge(path)
    rng = random.Random(0)
    for typ in tw.EDIT_TYPES:
        edits = edits_of(typ, n)
        ref = tw.to_tensor([tw.render(e.reference) for e in edits])
        tgt = tw.to_tensor([tw.render(e.target) for e in edits])
        (m0, c0), (m1, c1) = judge_direction(judge, ref, tgt, edits)
        signed, wrong = [], [J.wrong_target(rng, e) for e in edits]
        keep = [i for i, w in enumerate(wrong) if w is not None]
        blends = [(ref, torch.lerp(ref, tgt, a), edits) for a in (0, 0.25, 0.5, 1)]
        for r, x, es in blends + [(ref[keep], tw.to_tensor([tw.render(wrong[i]) for i in keep]),
                                   [edits[i] for i in keep])]:
            signed.append(signed_answer(judge, r, x, es, 0))
        print(f"{typ:10s} -dL/dx mass / cosine: at the reference {m0} / {c0:+.2f}, halfway {m1} /"
              f" {c1:+.2f} | signed l_yes - l_no at alpha 0, .25, .5, 1: "
              + " ".join(f"{v:+.1f}" for v in signed[:4]) + f" | wrong edit {signed[4]:+.1f}"
              + failure_answers(judge, rng, edits, ref, tgt), flush=True)
    print("exact targets of the eval edits answered as done, edit / identity question, by type "
          "and objects in the scene: " + ", ".join(f"{t} {k}: {a:.2f} / {b:.2f}" for (t, k), (a, b)
                                                   in target_answers(judge).items()))


@torch.no_grad()
def target_answers(judge, n=500):
    """On the n eval edits' exact targets -> {(type, objects in the scene): (share of the edit
    question, share of the identity question answered as a done edit wants)}. How sure is the
    judge of the very edit it asks for?"""
    edits = tt.eval_edits(n)
    ref = tw.to_tensor([tw.render(e.reference) for e in edits])
    tgt = tw.to_tensor([tw.render(e.target) for e in edits])
    right = [{}, {}]
    for slot in (0, 1):
        for i, d, _, w in V.answer_logits(judge, ref, tgt, [e.instruction for e in edits],
                                          [e.type for e in edits], [e.object for e in edits],
                                          slots=(slot,)):
            right[slot].update(zip(i.tolist(), ((w.float() * 2 - 1) * d > 0).tolist()))
    by = {}
    for i, e in enumerate(edits):
        by.setdefault((e.type, len(e.reference.objects())), []).append(i)
    return {k: tuple(float(np.mean([r[i] for i in idx])) for r in right)
            for k, idx in sorted(by.items())}


@torch.no_grad()
def signed_answer(judge, ref, x, edits, slot):
    """The mean l_yes - l_no of question `slot` (0: the edit, 1: the identity question), signed so
    that + is the answer a done edit gets."""
    groups = V.answer_logits(judge, ref, x, [e.instruction for e in edits], [e.type for e in edits],
                             [e.object for e in edits], slots=(slot,))
    return torch.cat([(w.float() * 2 - 1) * d for _, d, _, w in groups]).mean()


def failure_answers(judge, rng, edits, ref, tgt):
    """The signed answer (+: a done edit's) of the question that should catch each of the editor's
    failures (judge_data.failures), along the blend from the reference towards the failure at
    alpha .5 and 1, and the same question towards the target: does the answer fall only off
    the edit?"""
    out = ""
    for kind in ("erased", "added", "spilt"):
        fails = [J.failures(rng, e).get(kind) for e in edits]
        keep = [i for i, f in enumerate(fails) if f]
        if not keep:
            continue
        slot = fails[keep[0]][1]
        es, r = [edits[i] for i in keep], ref[keep]
        cand = tw.to_tensor([tw.render(fails[i][0]) for i in keep])
        vals = [signed_answer(judge, r, torch.lerp(r, end, a), es, slot)
                for end in (cand, tgt[keep]) for a in (0.5, 1.0)]
        out += (f" | {kind} ({'edit' if slot == 0 else 'identity'} q) .5, 1: {vals[0]:+.1f} "
                f"{vals[1]:+.1f} (target {vals[2]:+.1f} {vals[3]:+.1f})")
    return out


def failure_kinds(edits, images):
    """What the editor did with each edit, read by the oracle (toyworld.parse): "right" (the
    target), "spilt" (the edit done, and something else changed), "copy" (nothing changed),
    "copy+rest" (the edited element unchanged, something else changed: e.g. the new colour drawn
    as a new object), "else" / "else+rest" (the edited element changed wrongly: e.g. erased).
    -> {type: Counter}."""
    from collections import Counter, defaultdict
    out = defaultdict(Counter)
    for e, im in zip(edits, images):
        got, ref, tgt = (J._elements(s) for s in (tw.parse(im), e.reference, e.target))
        touched = [k for k in ref if ref[k] != tgt[k]]
        rest = all(got[k] == ref[k] for k in ref if k not in touched)
        if all(got[k] == tgt[k] for k in touched):
            kind = "right" if rest else "spilt"
        else:
            kind = ("copy" if all(got[k] == ref[k] for k in touched) else "else") + \
                ("" if rest else "+rest")
        out[e.type][kind] += 1
    return out


def attack_grid(paths, out="docs/judge_attack.png", n=10):
    """Unchanged references attacked towards "done" (judge_robust.attack_copies, the robustness
    probe's 50 steps at lr 0.01), a row per judge, each column's signed answer after the attack (+:
    "done") under its instruction: what fools the judge (docs/log.md, "Where the attack's flips
    land")."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "assets", "small"))
    import judge_robust as R
    rng = random.Random(5)
    edits = [tt.random_edit(rng, "pretrain", tw.EDIT_TYPES[k % 5]) for k in range(n)]
    rows, names, answers = [[tw.render(e.reference) for e in edits]], ["input"], []
    for path in paths:
        _, x, done = R.attack_copies(V.small_judge(path), edits)
        rows.append(tw.to_uint8(x))
        names.append(f"attacked, {os.path.basename(os.path.normpath(path))}")
        answers.append(done.tolist())
    rows.append([tw.render(e.target) for e in edits])
    names.append("target")
    caps = [e.instruction + " | " + " / ".join(f"{a[b]:+.1f}" for a in answers)
            for b, e in enumerate(edits)]
    tw.grid(rows, scale=4, captions=caps, names=names).save(out)
    print(f"wrote {out}")


@torch.no_grad()
def main(run, n=48):
    torch.manual_seed(0)
    gen, cfg = load_editor(run)
    prior, text_encoder, tok = M.small_prior(cfg.prior)
    fake = copy.deepcopy(prior)
    w = load_file(f"{run}/ckpt/model.safetensors")
    fake.load_state_dict({k[len("fake_score."):]: v for k, v in w.items()
                          if k.startswith("fake_score.")})
    judge = V.small_judge(cfg.judge)
    for typ in tw.EDIT_TYPES:
        edits = edits_of(typ, n)
        ref = tw.to_tensor([tw.render(e.reference) for e in edits])
        tgt = tw.to_tensor([tw.render(e.target) for e in edits])
        x = M.sample_edit(gen, ref, [e.instruction for e in edits], shift=cfg.shift)
        prompts = [e.edited_caption for e in edits]
        cap = M.encode_text(text_encoder, tok, prompts)
        null = M.encode_text(text_encoder, tok, prompts, drop=torch.ones(n, dtype=torch.bool))
        line = []
        for scale in (3.0, 8.0):
            cells = []
            for t in (0.3, 0.5, 0.7, 0.9):
                tb = torch.full((n,), t)
                xt = M.add_noise(x, torch.randn_like(x), tb)
                x0_real = M.x0_from_v(xt, dmd.real_velocity(prior, xt, tb, *cap, *null, scale), tb)
                x0_fake = M.x0_from_v(xt, M.velocity(fake, xt, tb, *cap), tb)
                d = (x0_real - x0_fake).flatten(1)
                cos = F.cosine_similarity(d, (tgt - x).flatten(1)).mean()
                cells.append(f"{cos:+.2f}/{d.norm(dim=1).mean():.0f}")
            line.append(f"cfg {scale:g}: " + " ".join(cells))
        touched, need, other = cell_response(x, ref, tgt, edits)
        unrec, obj_err, bg_err = realism_breakdown(tw.to_uint8(x))
        print(f"{typ:10s} dmd cos/norm at t=.3 .5 .7 .9 | {' | '.join(line)}")
        print(f"{'':10s} cell |x - y|: touched {mean(touched)} (target needs {mean(need)}), "
              f"untouched {mean(other)} | real: unrecognised {unrec}/{n}, error object px "
              f"{mean(obj_err)}, background px {mean(bg_err)}", flush=True)
        corr, std = speckle(gen, ref, [e.instruction for e in edits], cfg.shift)
        print(f"{'':10s} speckle: residual x - render(parse(x)) std "
              + (f"{std:.3f}, correlation between two sampler seeds {corr:+.2f} (0: noise, 1: "
                 "fixed by the input)" if corr is not None else "- (no output parses)"))
        (m0, c0), (m1, c1) = judge_direction(judge, ref, tgt, edits)
        print(f"{'':10s} judge -dL/dx: mass in touched cell / cosine with target - x: at the "
              f"reference {m0} / {c0:+.2f}, halfway {m1} / {c1:+.2f}", flush=True)
    heldout_split(M.editor_fn(gen, "cpu", cfg.shift), cfg.eval_n or 500)


PHRASINGS = ("make the {c0} {s} {c}", "make the {s} {c}", "make it {c}",
             "recolor the {c0} {s} to {c}", "the {s} should be {c} now",
             "make the {s} at the {cell} {c}", "make the {s} in the {cell} {c}")


def phrasing(edit_fn, judge, n=60):
    """Recolours of one object, the same n scenes and targets worded each way of PHRASINGS (some
    outside the grammar): the editor's success and share of copies, and at the copy the judge's
    signed answer (+: done) and judge_direction. Does the editor need a place word, and does the
    judge?"""
    rng, cases = random.Random(0), []
    while len(cases) < n:
        scene = tw.random_scene(rng, "train", n_objects=1)
        (i, (c0, s)), = scene.objects()
        c = rng.choice([k for k in tw.COLORS if k != c0])
        e = tw.apply_edit(scene, "color", cell=i, color=c)
        if not tw.has_heldout_combo(e):
            cases.append((e, dict(c0=c0, s=s, c=c, cell=tw.CELLS[i])))
    refs = [tw.render(e.reference) for e, _ in cases]
    ref, tgt = tw.to_tensor(refs), tw.to_tensor([tw.render(e.target) for e, _ in cases])
    for form in PHRASINGS:
        edits = [dataclasses.replace(e, instruction=form.format(**w)) for e, w in cases]
        with torch.no_grad():
            images = edit_fn(refs, [e.instruction for e in edits])
        ok = np.mean([tw.score_edit(e, im)["success"] for e, im in zip(edits, images)])
        copies = np.mean([tw.parse(im) == e.reference for e, im in zip(edits, images)])
        (mass, cos), _ = judge_direction(judge, ref, tgt, edits)
        answer = signed_answer(judge, ref, ref, edits, 0)
        print(f"{form:32s} success {ok:.2f} copies {copies:.2f} | judge at the copy: "
              f"{answer:+.1f}, -dL/dx mass {mass} cos {cos:+.2f}")


def cli(argv):
    """The command line of the module docstring; a bad argument is its usage."""
    if len(argv) == 3 and argv[1] == "--judge":
        judge_slope(argv[2])
    elif len(argv) >= 3 and argv[1] == "--attack":
        attack_grid(argv[2:])
    elif len(argv) == 3 and argv[1] == "--failures":
        gen, cfg = load_editor(argv[2])
        edits = tt.eval_edits(cfg.eval_n or 500)
        _, images = tw.evaluate(M.editor_fn(gen, "cpu", cfg.shift), edits)
        for typ, c in failure_kinds(edits, images).items():
            print(f"{typ:10s} " + " ".join(f"{k} {v}" for k, v in c.most_common()))
    elif len(argv) == 3 and argv[1] == "--phrasing":
        gen, cfg = load_editor(argv[2])
        phrasing(M.editor_fn(gen, "cpu", cfg.shift), V.small_judge(cfg.judge))
    elif len(argv) == 2 and not argv[1].startswith("-"):
        main(argv[1])
    else:
        raise SystemExit(__doc__.split("\n\n")[1])


if __name__ == "__main__":
    try:
        cli(sys.argv)
    except (FileNotFoundError, ValueError) as e:  # a missing or foreign run: one line
        raise SystemExit(f"error: {e}")
