"""The small world's questions for the VLM judge: yes/no questions with hard negatives, open
questions, captions and "what changed?", the judge's tokenizer and its accuracy (attacks on it
and adversarial training: judge_robust.py).

Used to pretrain the judge (pretrain.py judge) and to test it (test_assets.py). Every label is
computed from the scenes themselves, never by construction. Single-image types: presence,
position, color, shape, background. Two-image types ask exactly what vlm_reward.vlm_loss asks
(vlm_reward.edit_questions): "edit_done" is yes iff the edited elements of the candidate equal
the target's (a removal: "does the image have <object>?" of the candidate alone); "same_except"
iff every other element equals the reference's. Candidates: the target, the unchanged
reference, a wrong edit (same type, other cell or value), the edit plus an extra change, a
colour or shape "edit" done by adding a new object instead ("added_instead"), a removal done by
changing the object in place instead ("replaced"), a different scene, and the unchanged
reference attacked while training ("adversarial"). A removal's identity question ("apart from
<object>") excuses the object's absence, not another object in its place. Partial edits (pixel
blends of reference and target, partial_sample) get a soft answer that grows with the blend,
so the judge's answer has a slope from the copy towards the edit (docs/log.md, "A judge with a
slope at the copy").
Instructions come from toytext's trained grammar; the eval set adds its held-out grammar.
"""
import math
import random

import torch

import toytext as tt
import toyworld as tw
import vlm_reward as V
# Single-image yes/no questions (type: template); labels come from the scene itself.
SINGLE_Q = {"presence": ["is there a {obj} in the image ?", "does the image have a {obj} ?"],
            "position": ["is there a {obj} at {cell} ?", "does the image have a {obj} at {cell} ?"],
            "color": ["is the object at {cell} {color} ?"],
            "shape": ["is the object at {cell} a {shape} ?"],
            "background": ["is the background {bg} ?"]}
CANDIDATES = ("target", "unchanged", "wrong_edit", "extra_change", "different_scene",
              "adversarial", "added_instead", "replaced")
WEIGHTS = (0.35, 0.15, 0.15, 0.15, 0.05, 0.05, 0.1, 0.0)  # "replaced": pretrain.py --replaced
YN = " answer yes or no ."


def judge_tokenizer():
    """vlm_reward.judge_tokenizer plus the words of this file's questions and answers."""
    words = {w for qs in SINGLE_Q.values() for q in qs for w in q.split() if "{" not in w}
    for q in (YN, "describe the image .", "what changed ?", "user assistant yes no nothing",
              "what is color shape where"):
        words.update(w for w in q.split() if "{" not in w)
    return V.judge_tokenizer(words | set(tt.vocabulary()))


def single_question(rng, scene, kinds=tuple(SINGLE_Q), cells=4):
    """A balanced single-image question with hard negatives -> (type, question, label).
    cells < 4: questions about a cell ask only about the first `cells` cells (a curriculum)."""
    kind, want = rng.choice(kinds), rng.random() < 0.5
    objs = [(i, o) for i, o in scene.objects() if i < cells] or scene.objects()
    i, o = rng.choice(objs)
    if kind == "background":
        bg = scene.bg if want else rng.choice([b for b in tw.BACKGROUNDS if b != scene.bg])
        return kind, SINGLE_Q[kind][0].format(bg=bg) + YN, bg == scene.bg
    if kind in ("color", "shape"):
        if rng.random() < 0.15 or i >= cells:  # about an empty cell: always "no"
            empty = [j for j in range(cells) if scene.cells[j] is None]
            i = rng.choice(empty) if empty else i
        col = o[0] if want else rng.choice([c for c in tw.COLORS if c != o[0]])
        shp = o[1] if want else rng.choice([s for s in tw.SHAPES if s != o[1]])
        q = SINGLE_Q[kind][0].format(cell=tw.CELLS[i], color=col, shape=shp)
        c = scene.cells[i]
        return kind, q + YN, c is not None and (c[0] == col if kind == "color" else c[1] == shp)
    # presence / position: negatives share the colour or the shape of a present object, or
    # (position) are a present object asked at another cell
    cell = i
    if not want:
        r = rng.random()
        if kind == "position" and r < 0.4 and cells > 1:
            cell = rng.choice([j for j in range(cells) if j != i])
        elif r < 0.8:
            o = (o[0], rng.choice(tw.SHAPES)) if rng.random() < 0.5 else (rng.choice(list(tw.COLORS)), o[1])
        else:
            o = rng.choice(tw.ALL_OBJECTS)
    q = rng.choice(SINGLE_Q[kind]).format(obj=f"{o[0]} {o[1]}", cell=tw.CELLS[cell])
    label = scene.cells[cell] == o if kind == "position" else o in {x for _, x in objs}
    return kind, q + YN, label


def _elements(s):
    return {"bg": s.bg, 0: s.cells[0], 1: s.cells[1], 2: s.cells[2], 3: s.cells[3]}


def focused_edit(rng, grammar="pretrain", focus=0.0):
    """tt.random_edit, but with probability focus a colour or shape edit in a two-object scene:
    the edits whose exact target the judge is least sure of (docs/log.md, "Judge z2")."""
    if not focus or rng.random() >= focus:
        return tt.random_edit(rng, grammar)
    while True:
        edit = tt.random_edit(rng, grammar, rng.choice(("color", "shape")))
        if len(edit.reference.objects()) == 2:
            return edit


def pair_question(rng, grammar="pretrain", focus=0.0):
    """A question of the paper's form, exactly as vlm_reward.edit_questions asks it, about a
    reference and a candidate -> (type, question, images, label, kind, touched). 'edit_done':
    non-removals, yes iff the touched elements of the candidate equal the target's; removals ask
    "does the image have <object>?" of the candidate alone, yes iff an object fits the expression
    (toytext.matches); 'same_except': yes iff every untouched element equals the reference's.
    kind 'adversarial' is the unchanged reference, to be perturbed by attack() while training.
    grammar: 'pretrain' (the trained grammar) or 'heldout_grammar'; focus: focused_edit's."""
    edit = focused_edit(rng, grammar, focus)
    kind = rng.choices(CANDIDATES, weights=WEIGHTS)[0]
    empty = [i for i in range(4) if edit.reference.cells[i] is None]
    if kind == "added_instead" and (edit.type not in ("color", "shape") or not empty):
        kind = "extra_change"
    if kind == "replaced" and edit.type != "remove":
        kind = "wrong_edit"
    cand = edit.target
    if kind in ("unchanged", "adversarial"):
        cand = edit.reference
    elif kind == "wrong_edit":  # the same type of edit, other cell or other value
        cand = wrong_target(rng, edit) or edit.target
    elif kind == "added_instead":  # the new colour / shape drawn as a new object elsewhere
        obj = edit.target.cells[next(e for e in edit.touched if e != "bg")]
        cand = tw.apply_edit(edit.reference, "add", cell=rng.choice(empty), color=obj[0],
                             shape=obj[1]).target
    elif kind == "replaced":
        cand = replaced(rng, edit)
    elif kind == "extra_change":  # the edit, plus a change of an element it does not touch
        n_obj = len(edit.target.objects())
        types = ("color", "shape", "background") + (("add",) if n_obj < 4 else ()) + \
            (("remove",) if n_obj > 1 else ())
        while True:
            e2 = _random_edit_of(rng, edit.target, rng.choice(types))
            if not set(e2.touched) & set(edit.touched):
                cand = e2.target
                break
    elif kind == "different_scene":
        cand = tw.random_scene(rng)
    ref_el, tgt_el, cand_el = _elements(edit.reference), _elements(edit.target), _elements(cand)
    slot = 0 if rng.random() < 0.5 else 1
    q, n_img, _ = V.edit_questions(edit.instruction, edit.type, edit.object)[slot]
    if slot == 1:
        qtype, label = "same_except", all(cand_el[e] == ref_el[e] for e in ref_el
                                          if e not in edit.touched)
        if edit.type == "remove":  # its cell: the object, or nothing; not another object
            label = label and all(cand_el[e] in (ref_el[e], None) for e in edit.touched)
    elif edit.type == "remove":
        qtype, label = "edit_done", tt.matches(edit.object, cand)  # "yes, it is still there"
    else:
        qtype, label = "edit_done", all(cand_el[e] == tgt_el[e] for e in edit.touched)
    images = [edit.reference, cand][2 - n_img:]
    return qtype, q, images, label, kind, edit.touched


def wrong_target(rng, edit, tries=100):
    """The target of the same type of edit of the same reference, done wrong (another cell or
    value), or None if there is none (a lone object's removal)."""
    for _ in range(tries):
        target = _random_edit_of(rng, edit.reference, edit.type).target
        if target != edit.target:
            return target
    return None


def replaced(rng, edit):
    """A removal done as a recolour or reshape of its object, in place (the editor's removal
    failure: the named object is gone, another stands where it was)."""
    cell = next(e for e in edit.touched if e != "bg")
    color, shape = edit.reference.cells[cell]
    if rng.random() < 0.5:
        return tw.apply_edit(edit.reference, "color", cell=cell,
                             color=rng.choice([c for c in tw.COLORS if c != color])).target
    return tw.apply_edit(edit.reference, "shape", cell=cell,
                         shape=rng.choice([s for s in tw.SHAPES if s != shape])).target


def _random_edit_of(rng, scene, type):
    while True:
        try:
            return tw.apply_edit(scene, type, **_args_like(rng, scene, type))
        except (ValueError, IndexError):
            continue


def _args_like(rng, scene, type):
    occupied = [i for i, _ in scene.objects()]
    empty = [i for i in range(4) if i not in occupied]
    if type == "background":
        return {"bg": rng.choice([b for b in tw.BACKGROUNDS if b != scene.bg])}
    if type == "add":
        return {"cell": rng.choice(empty), "color": rng.choice(list(tw.COLORS)),
                "shape": rng.choice(tw.SHAPES)}
    cell = rng.choice(occupied)
    if type == "remove":
        return {"cell": cell}
    obj = scene.cells[cell]
    if type == "color":
        return {"cell": cell, "color": rng.choice([c for c in tw.COLORS if c != obj[0]])}
    return {"cell": cell, "shape": rng.choice([s for s in tw.SHAPES if s != obj[1]])}


def balanced(rng, fn, *args):
    """Redraw fn(rng, *args) -> (..., label, kind) until its label is a fair coin's."""
    want = rng.random() < 0.5
    while True:
        out = fn(rng, *args)
        if out[3] == want:
            return out


def soft_yes(alpha, slope=8.0, mid=0.5):
    """The answer a partial edit gets: P(yes, the edit was done) = sigmoid(slope (alpha - mid)),
    alpha the share of the way from reference to target (0: a copy, 1: the edit): the logit
    rises steadily from the copy (mid 0.8, where a half-faded object still reads "not done", was
    tried too: docs/log.md, "A judge with a slope at the copy")."""
    return 1 / (1 + math.exp(-slope * (alpha - mid)))


def failures(rng, edit):
    """The ways the editor fails an object edit, each as a candidate and the question that catches
    it (docs/log.md, "Where the editor fails, and a judge that sees it coming"): a colour or shape
    edit done by erasing the object ("erased") or by drawing the new colour or shape as a new
    object elsewhere ("added"), both for the edit question (slot 0), and the change spilt onto
    another object too ("spilt"), for the identity question (slot 1). -> {kind: (candidate, slot)},
    empty for additions and backgrounds."""
    if edit.type not in ("color", "shape", "remove"):
        return {}
    cell = next(e for e in edit.touched if e != "bg")
    ref, new = edit.reference, edit.target.cells[cell]
    out = {}
    if edit.type != "remove":
        out["erased"] = (tw.apply_edit(ref, "remove", cell=cell).target, 0)
        empty = [i for i in range(4) if ref.cells[i] is None]
        if empty:
            out["added"] = (tw.apply_edit(ref, "add", cell=rng.choice(empty), color=new[0],
                                          shape=new[1]).target, 0)
    spilt = {i: None if new is None else (new[0], o[1]) if edit.type == "color" else (o[0], new[1])
             for i, o in ref.objects() if i != cell}
    spilt = {i: o for i, o in spilt.items() if o != ref.cells[i]}
    if spilt:
        j = rng.choice(sorted(spilt))
        cells = list(edit.target.cells)
        cells[j] = spilt[j]
        out["spilt"] = (tw.Scene(ref.bg, tuple(cells)), 1)
    return out


def partial_sample(rng, mid=0.5, wrong=0.0, fail=0.0, focus=0.0):
    """A partial edit asked one of vlm_loss's questions: images (reference, target), to be blended
    by blend() into (1 - alpha) reference + alpha target. The edit question's answer is soft,
    soft_yes(alpha, mid=mid) (a removal's "does the image have": 1 - soft_yes); the identity
    question's is yes at every alpha (only the edited element moves). With probability `wrong`
    the blend goes towards a wrong edit instead (same type, other cell or value: another colour)
    and the edit question gets the copy's answer at every alpha, so that the judge's answer rises
    only towards the edit asked for (docs/log.md, "A judge that tells the colour asked for"); for
    a removal, half of those blend towards its object changed in place (replaced()), asked the
    identity question, whose answer falls as 1 - soft_yes(alpha). With probability `fail` it goes
    towards one of the editor's failures (failures()): asked the edit question, the copy's answer at
    every alpha; asked the identity question, 1 - soft_yes(alpha). focus: focused_edit's. ->
    (images, question, answer, info)."""
    edit = focused_edit(rng, "pretrain", focus)
    alpha, slot = rng.random(), 0 if rng.random() < 0.75 else 1
    target, p = edit.target, None
    r = rng.random()
    if r < wrong:
        if edit.type == "remove" and rng.random() < 0.5:
            slot, target, p = 1, replaced(rng, edit), 1 - soft_yes(alpha)
        else:
            slot, target = 0, wrong_target(rng, edit) or edit.target
    elif r < wrong + fail and (f := failures(rng, edit)):
        target, slot = rng.choice(list(f.values()))
        p = 1 - soft_yes(alpha) if slot == 1 else None
    q, n_img, want = V.edit_questions(edit.instruction, edit.type, edit.object)[slot]
    a = alpha if target == edit.target else 0.0
    if p is None:
        p = 1.0 if slot == 1 else (soft_yes(a, mid=mid) if want else 1 - soft_yes(a, mid=mid))
    info = {"type": "same_except" if slot else "edit_done", "kind": "partial", "alpha": alpha,
            "p_yes": p, "reference": edit.reference}
    return [edit.reference, target][2 - n_img:], q, "yes" if p > 0.5 else "no", info


def blend(batch, perturbed):
    """The partial samples' last images: (1 - alpha) render(reference) + alpha render(target)."""
    for b, (imgs, _, _, info) in enumerate(batch):
        if info.get("kind") == "partial":
            ref, tgt = tw.to_tensor([tw.render(info["reference"]), tw.render(imgs[-1])])
            perturbed[b] = torch.lerp(ref, tgt, info["alpha"])


def judge_sample(rng, task, kinds=tuple(SINGLE_Q), cells=4, grammar="pretrain", focus=0.0):
    """One judge training/eval sample: (images as scenes, question, answer, info). focus: the
    pair questions' focused_edit share."""
    if task == "caption":
        s = tw.random_scene(rng)
        return [s], "describe the image .", tt.caption(rng, s, detailed=True).text, {}
    if task == "change":
        e = tt.random_edit(rng, "pretrain", rng.choice(tw.EDIT_TYPES + ("none",)))
        return [e.reference, e.target], "what changed ?", \
            ("nothing" if e.type == "none" else e.instruction), {}
    if task == "vqa":  # short open answers that tie question words to image tokens
        s = tw.random_scene(rng)
        i = rng.randrange(4)
        c = s.cells[i]
        where = [tw.CELLS[j] for j, o in s.objects() if o == (c or s.objects()[0][1])]
        q, a = rng.choice([
            ("what is the background ?", s.bg),
            (f"what is at {tw.CELLS[i]} ?", f"{c[0]} {c[1]}" if c else "nothing"),
            (f"what color is the object at {tw.CELLS[i]} ?", c[0] if c else "nothing"),
            (f"what shape is the object at {tw.CELLS[i]} ?", c[1] if c else "nothing"),
            (f"where is the {' '.join(c or s.objects()[0][1])} ?", " and ".join(where))])
        return [s], q, a, {}
    if task == "single":  # balanced: redraw scene and question until the label is a coin's
        want = rng.random() < 0.5
        while True:
            s = tw.random_scene(rng)
            t, q, label = single_question(rng, s, kinds, cells)
            if label == want:
                break
        cell = next((k for k, c in enumerate(tw.CELLS) if f" at {c} " in q), None)
        return [s], q, "yes" if label else "no", {"type": t, "ground": grounding([s], cell)}
    t, q, imgs, label, kind, touched = balanced(rng, pair_question, grammar, focus)
    cell = next((e for e in touched if e != "bg"), None)
    return imgs, q, "yes" if label else "no", {"type": t, "kind": kind,
                                               "ground": grounding(imgs, cell)}


def grounding(scenes, cell):
    """Targets for the grounding heads at a yes/no answer position: what the answer has to be
    computed from, read off the (last) image: its objects, background, the asked or edited cell's
    content, and (two images) which elements equal the first image's."""
    s = scenes[-1]
    g = {"present": [float(o in s.cells) for o in tw.ALL_OBJECTS],
         "bg": list(tw.BACKGROUNDS).index(s.bg),
         "cell": -100 if cell is None else (0 if s.cells[cell] is None
                                            else 1 + tw.ALL_OBJECTS.index(s.cells[cell]))}
    if len(scenes) == 2:
        r = scenes[0]
        g["same"] = [float(r.bg == s.bg)] + [float(a == b) for a, b in zip(r.cells, s.cells)]
    return g


def judge_eval_set(n=1000, seed=4321):
    """n single-image and n two-image questions (trained grammar), and n two-image questions
    whose instructions come from the held-out grammar (type "heldout/..."). The adversarial kind
    is left out: those candidates exist only once attacked (see robustness())."""
    rng = random.Random(seed)
    out = [judge_sample(rng, "single") for _ in range(n)]
    for grammar in ("pretrain", "heldout_grammar"):
        k = 0
        while k < n:
            s = judge_sample(rng, "pair", grammar=grammar)
            if s[3]["kind"] == "adversarial":
                continue
            if grammar != "pretrain":
                s[3]["type"] = "heldout/" + s[3]["type"]
            out.append(s)
            k += 1
    return out


@torch.no_grad()
def judge_accuracy(judge, samples, batch=128):
    """Accuracy of sign(l_yes - l_no) on yes/no samples, overall and by type / candidate kind,
    plus accuracy on the negatives alone (a yes-bias check)."""
    from collections import defaultdict
    hits = defaultdict(list)
    for n_img in (1, 2):  # (a removal's "does the image have" is a one-image pair question)
        group = [s for s in samples if len(s[0]) == n_img]
        for k in range(0, len(group), batch):
            chunk = group[k:k + batch]
            feats = [judge.image_features(tw.to_tensor([tw.render(s[0][j]) for s in chunk]))
                     for j in range(n_img)]
            d, _ = judge.answer_logits([s[1] for s in chunk], feats)
            for s, di in zip(chunk, d.tolist()):
                ok = (di > 0) == (s[2] == "yes")
                side = ("pair_heldout" if s[3]["type"].startswith("heldout/") else "pair") \
                    if "kind" in s[3] else "single"
                for key in (side, f"{side}/{s[3]['type'].split('/')[-1]}", f"{side}/negatives" if s[2] == "no"
                            else None, f"{side}/{s[3].get('kind')}" if "kind" in s[3] else None):
                    if key:
                        hits[key].append(ok)
    return {k: sum(v) / len(v) for k, v in sorted(hits.items())}
