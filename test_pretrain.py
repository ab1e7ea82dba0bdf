"""The small world's asset building (assets/small/): the judge's question labels follow the
scenes, and a killed pretraining run resumes:  python -m pytest -q test_pretrain.py"""
import os
import random
import subprocess
import sys
from types import SimpleNamespace

import torch

import model as M
import toytext as tt
import toyworld as tw
import vlm_reward as V

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "assets", "small"))
import judge_data as J  # noqa: E402
import judge_robust as R  # noqa: E402


def test_question_labels_follow_the_scene():
    rng = random.Random(1)
    for _ in range(500):
        t, q, images, label, kind, touched = J.pair_question(rng)
        if kind == "target":
            assert label == (t == "edit_done" and len(images) == 2 or t == "same_except")
        if kind in ("unchanged", "adversarial"):
            assert label == (t == "same_except" or len(images) == 1)  # a removal: still there
        if kind == "extra_change" and t == "same_except" or kind == "added_instead":
            assert not label
    weights = J.WEIGHTS  # "replaced" candidates drawn often: a removal
    J.WEIGHTS = tuple(dict(zip(J.CANDIDATES, weights), replaced=1.0).values())
    try:  # done as a recolour or reshape in place, which "apart from <object>" does not excuse
        seen = 0
        for _ in range(300):
            t, q, images, label, kind, touched = J.pair_question(rng)
            if kind == "replaced":
                seen += 1
                if t == "same_except":
                    assert images[-1].cells[touched[0]] not in (None, images[0].cells[touched[0]])
                assert label == (t == "edit_done" and tt.matches(q.split("have ")[1][:-len(
                    " ? answer yes or no .")], images[-1]))
        assert seen > 20
    finally:
        J.WEIGHTS = weights
    s = tw.Scene("white", (("red", "circle"), None, None, None))
    for _ in range(200):
        t, q, label = J.single_question(rng, s)
        if t == "background":
            assert label == ("white" in q)
        if t == "position":
            assert label == ("red circle at top left" in q)
    assert tt.matches("the red one", s) and tt.matches("the object at the upper left", s)
    assert not tt.matches("the circle in the lower right corner", s)


def test_partial_edits_get_a_soft_answer_that_the_judge_loss_uses():
    """partial_sample + blend: alpha 0 is the reference, 1 the target; the edit question's answer
    grows with alpha (a removal's "does it have" falls); judge_batch_loss trains on it."""
    import pretrain as P
    rng = random.Random(0)
    assert J.soft_yes(0) < 0.05 < J.soft_yes(0.3) < 0.5 < J.soft_yes(0.7) < 0.95 < J.soft_yes(1)
    batch = [J.partial_sample(rng) for _ in range(40)]
    for imgs, q, a, info in batch:
        edit_q = info["type"] == "edit_done"
        removal = len(imgs) == 1
        want = J.soft_yes(info["alpha"]) if edit_q and not removal else \
            1 - J.soft_yes(info["alpha"]) if edit_q else 1.0
        assert info["p_yes"] == want and a == ("yes" if want > 0.5 else "no")
    imgs, q, a, info = batch[0]
    for alpha, scene in ((0.0, info["reference"]), (1.0, imgs[-1])):
        out = {}
        J.blend([(imgs, q, a, dict(info, alpha=alpha))], out)
        assert torch.allclose(out[0], tw.to_tensor([tw.render(scene)])[0])
    torch.manual_seed(0)
    tok = J.judge_tokenizer()
    judge = V.Judge(V.Qwen2_5_VLForConditionalGeneration(V.tiny_judge_config(tok, 32, 32, 1))
                    .eval(), tok)
    heads = P.CellHeads(judge.vlm.config.text_config.hidden_size)
    soft = [s for s in batch if 0 < s[3]["p_yes"] < 1][:4]
    losses = []
    for p in (0.01, 0.99):
        b = [(i, q, a, dict(info, p_yes=p)) for i, q, a, info in soft]
        perturbed = {}
        J.blend(b, perturbed)
        losses.append(P.judge_batch_loss(judge, heads, b, None, perturbed)[0].item())
    assert abs(losses[0] - losses[1]) > 1e-3, losses  # the soft answer enters the loss


def test_partial_edits_towards_a_wrong_edit_keep_the_copys_answer():
    """partial_sample(wrong=1): the blend goes towards another edit of the same type, asked the
    edit question; its answer is the copy's ("no"; a removal's "does it have": "yes") at any
    alpha. Half the removals instead blend towards the object changed in place, asked the
    identity question, whose answer falls with alpha."""
    rng = random.Random(1)
    kinds = set()
    for _ in range(60):
        imgs, q, a, info = J.partial_sample(rng, mid=0.8, wrong=1.0)
        assert imgs[-1] != info["reference"]
        if info["type"] == "same_except":  # a removal's object replaced in place
            ref, new = info["reference"], imgs[-1]
            cell = next(i for i in range(4) if new.cells[i] != ref.cells[i])
            assert new.cells[cell] is not None and ref.cells[cell] is not None
            assert info["p_yes"] == 1 - J.soft_yes(info["alpha"])
            kinds.add("replaced")
            continue
        removal = len(imgs) == 1
        kinds.add("removal" if removal else "other")
        assert info["type"] == "edit_done"
        assert info["p_yes"] == (1 - J.soft_yes(0, mid=0.8) if removal else J.soft_yes(0, mid=0.8))
        assert a == ("yes" if removal else "no")
    assert kinds == {"replaced", "removal", "other"}


def test_partial_edits_towards_the_editors_failures():
    """partial_sample(fail=1): a colour or shape edit blends towards its object erased or its new
    colour / shape drawn as a new object (the edit question: the copy's answer at every alpha), an
    object edit towards the change spilt onto a second object (the identity question: falling as
    1 - soft_yes(alpha)); additions and backgrounds have no such failure and stay partial edits."""
    rng = random.Random(2)
    kinds = set()
    for _ in range(200):
        imgs, q, a, info = J.partial_sample(rng, mid=0.8, fail=1.0)
        ref, cand, alpha, p = info["reference"], imgs[-1], info["alpha"], info["p_yes"]
        changed = [i for i in range(4) if ref.cells[i] != cand.cells[i]]
        if info["type"] == "same_except" and len(changed) == 2:
            assert p == 1 - J.soft_yes(alpha)
            kinds.add("spilt")
        elif info["type"] == "edit_done" and len(imgs) == 2 and p == J.soft_yes(0, mid=0.8):
            (k,) = changed
            kinds.add("erased" if cand.cells[k] is None else "added")
            assert (ref.cells[k] is None) == (cand.cells[k] is not None)  # erased, or drawn anew
            assert a == "no"
        else:  # an edit with no failure of these kinds: the partial edit itself
            assert len(changed) <= 1 and p in (1.0, J.soft_yes(alpha, mid=0.8), 1 - J.soft_yes(alpha, mid=0.8))
            kinds.add("partial")
    assert kinds == {"spilt", "erased", "added", "partial"}


def test_focus_draws_two_object_colour_and_shape_edits():
    """judge_data.focused_edit: focus 1 gives only colour / shape edits of two-object scenes,
    focus 0 the plain draw (the same random stream as tt.random_edit), and focus reaches the pair
    questions and the partial edits."""
    for seed in range(50):
        e = J.focused_edit(random.Random(seed), focus=1.0)
        assert e.type in ("color", "shape") and len(e.reference.objects()) == 2
    assert J.focused_edit(random.Random(5)) == tt.random_edit(random.Random(5), "pretrain")
    rng = random.Random(3)
    pairs = [J.judge_sample(rng, "pair", focus=1.0) for _ in range(40)]
    assert all(len(imgs[0].objects()) == 2 for imgs, *_ in pairs)
    parts = [J.partial_sample(rng, mid=0.8, focus=1.0)[3]["reference"] for _ in range(40)]
    assert all(len(ref.objects()) == 2 for ref in parts)


def test_wrong_target_is_the_same_type_done_elsewhere_or_otherwise():
    """judge_data.wrong_target: the same type of edit on the same reference, read by the oracle
    as neither the target nor the reference; None for a lone object's removal."""
    rng = random.Random(0)
    for typ in tw.EDIT_TYPES:
        for _ in range(20):
            e = tt.random_edit(rng, "pretrain", typ)
            wrong = J.wrong_target(rng, e)
            assert wrong not in (e.target, e.reference, None)
            changed = [i for i in range(4) if wrong.cells[i] != e.reference.cells[i]]
            assert (wrong.bg != e.reference.bg) == (typ == "background")
            assert len(changed) == (0 if typ == "background" else 1)
            if typ == "color":  # another colour, same shape
                assert wrong.cells[changed[0]][1] == e.reference.cells[changed[0]][1]
    lone = tw.apply_edit(tw.Scene("white", (("red", "circle"), None, None, None)), "remove", cell=0)
    assert J.wrong_target(rng, lone) is None


def test_the_attack_flips_an_untrained_judge_and_robustness_reports_it():
    """judge_robust.attack pushes the answer where it is told; robustness() counts the flips."""
    torch.manual_seed(0)
    tok = J.judge_tokenizer()
    judge = V.Judge(V.Qwen2_5_VLForConditionalGeneration(V.tiny_judge_config(tok, 32, 32, 1))
                    .eval(), tok)
    rob = R.robustness(judge, n=10, steps=(20,), lr=0.05)
    flips, dx, fooled, unreal = rob[20]
    assert flips >= 0.8 and dx > 0 and 0 <= fooled + unreal <= flips, rob


def test_projected_adversarial_labels_follow_the_edit(monkeypatch):
    """adversarial(project=mid): an attacked copy is answered as a partial edit at its progress
    along the edit: an attack that lands on the target reads as the blend at alpha 1, one that
    lands on the copy as alpha 0; a removal's "does the image have" gets the opposite answer."""
    rng = random.Random(3)
    batch = [R.adversarial_sample(rng) for _ in range(12)]
    land = [b % 2 == 0 for b in range(len(batch))]  # which attacks land on the target

    def fake_attack(judge, images, questions, want, steps, lr):
        group = [b for b, s in enumerate(batch) if len(s[0]) == len(images)]
        x = images[-1].clone()
        for j, b in enumerate(group):
            if land[b]:
                x[j] = tw.to_tensor([tw.render(batch[b][3]["target"])])[0]
        return x, None
    monkeypatch.setattr(R, "attack", fake_attack)
    R.adversarial(SimpleNamespace(vlm=SimpleNamespace(eval=lambda: None)), batch, 1, 0.1, project=0.8)
    for b, (imgs, q, ans, info) in enumerate(batch):
        done = J.soft_yes(float(land[b]), mid=0.8)
        want = done if len(imgs) == 2 else 1 - done
        assert abs(info["p_yes"] - want) < 1e-4 and abs(info["alpha"] - land[b]) < 1e-5
        assert ans == ("yes" if want > 0.5 else "no")
    assert {len(s[0]) for s in batch} == {1, 2}  # both question forms were drawn


def test_pretrain_prior_resumes(tmp_path):
    """A killed prior run continues from its state file (which holds a random.Random)."""
    run = [sys.executable, "assets/small/pretrain.py", "prior", "--batch", "4", "--eval_every", "1",
           "--eval_n", "2", "--threads", "1", "--layers", "1",
           "--out", str(tmp_path / "prior"), "--state_dir", str(tmp_path / "state")]
    r = subprocess.run(run + ["--steps", "2"], capture_output=True, text=True, cwd=HERE)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run(run + ["--steps", "3", "--resume"], capture_output=True, text=True, cwd=HERE)
    assert r.returncode == 0 and "resumed at step 2" in r.stdout, r.stderr[-2000:]
    assert "step 3 |" in r.stdout + r.stderr and os.path.isdir(tmp_path / "prior" / "transformer")
    assert len(M.load_prior(str(tmp_path / "prior"))[0].transformer_blocks) == 1  # --layers
