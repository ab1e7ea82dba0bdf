"""Tests of the judge wrapper (vlm_reward.py) on a tiny random Qwen2.5-VL:
python -m pytest -q test_vlm_reward.py"""
import random

import pytest
import torch

import toyworld as tw
import vlm_reward as V


@pytest.fixture(scope="module")
def judge():
    torch.manual_seed(0)
    tok = V.judge_tokenizer()
    vlm = V.Qwen2_5_VLForConditionalGeneration(V.tiny_judge_config(tok, 32, 32, 1))
    return V.Judge(vlm.eval(), tok)


def test_torch_patchify_matches_the_qwen_image_processor(judge):
    from transformers import Qwen2VLImageProcessor
    proc = Qwen2VLImageProcessor(patch_size=8, merge_size=2, temporal_patch_size=2,
                                 min_pixels=32 * 32, max_pixels=32 * 32)
    rng = random.Random(0)
    images = [tw.render(tw.random_scene(rng)) for _ in range(3)]
    ref = proc(images=images, return_tensors="pt")
    ours, grid = judge.pixels(tw.to_tensor(images))
    assert torch.equal(grid, ref["image_grid_thw"])
    assert torch.allclose(ours, ref["pixel_values"].float(), atol=1e-4)


def test_prompt_expands_one_placeholder_per_visual_token(judge):
    text = judge.prompt("is the background white ? answer yes or no .", 2)
    ids = judge.tokenizer(text).input_ids
    assert ids.count(judge.vlm.config.image_token_id) == 2 * judge.tokens_per_image == 8
    assert judge.tokenizer.unk_token_id not in ids


def test_answer_gradient_reaches_candidate_not_detached_reference(judge):
    ref = torch.rand(2, 3, 32, 32, requires_grad=True)
    cand = torch.rand(2, 3, 32, 32, requires_grad=True)
    with torch.no_grad():
        ref_feats = judge.image_features(ref)
    d, _ = judge.answer_logits([V.EDIT_Q.format(instruction="make the red circle blue")] * 2,
                               [ref_feats, judge.image_features(cand)])
    d.sum().backward()
    assert cand.grad.abs().sum() > 0 and ref.grad is None


def test_one_pass_over_all_questions_answers_as_each_question_alone(judge):
    """answer_logits asks every question of a batch in one right-padded pass of the language
    model; each answer equals the one its question gets asked alone (its own images only)."""
    torch.manual_seed(2)
    ref, x = torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32)
    instr = ["make the red circle blue", "remove the green square", "add a red square at top left"]
    types = ["color", "remove", "add"]
    groups = V.answer_logits(judge, ref, x, instr, types)
    with torch.no_grad():
        y_feats, x_feats = judge.image_features(ref), judge.image_features(x)
    asked = [(slot, b) for slot in (0, 1) for n in (1, 2) for b in range(3)
             if V.edit_questions(instr[b], types[b])[slot][1] == n]  # answer_logits' order
    together = torch.cat([d for _, d, _, _ in groups])
    assert [len(i) for i, *_ in groups] == [1, 2, 3] and len(together) == len(asked) == 6
    for (slot, b), d in zip(asked, together):
        q, n, _ = V.edit_questions(instr[b], types[b])[slot]
        imgs = [x_feats[b:b + 1]] if n == 1 else [y_feats[b:b + 1], x_feats[b:b + 1]]
        alone, _ = judge.answer_logits([q], imgs)
        assert torch.allclose(d, alone[0], atol=1e-5), (slot, b)
    assert together.std() > 1e-3  # the questions get different answers


def test_edit_questions_follow_the_paper_and_the_edit_type():
    """A removal's questions come from its type and name its object; any phrasing works."""
    qs = V.edit_questions("erase it please", "remove", "the red one")
    assert qs[0] == ("does the image have the red one ? answer yes or no .", 1, False)
    assert qs[1][1:] == (2, True) and qs[1][0].startswith("apart from the red one , is the second")
    qs = V.edit_questions("remove the green square", "remove")  # no object given: read it off
    assert qs[0][0] == V.HAS_Q.format(object="the green square")
    for instr, typ in (("make the red circle blue", "color"), ("remove the red tint", "color")):
        qs = V.edit_questions(instr, typ)
        assert [q[1:] for q in qs] == [(2, True), (2, True)]
        assert instr in qs[0][0] and instr in qs[1][0] and "same as the first" in qs[1][0]


def test_vlm_loss_gradient_reaches_generated_pixels_not_reference(judge):
    ref = torch.rand(3, 3, 32, 32, requires_grad=True)
    x = torch.rand(3, 3, 32, 32, requires_grad=True)
    instr = ["make the red circle blue", "remove the green square", "add a red square at top left"]
    V.vlm_loss(judge, ref, x, instr, ["color", "remove", "add"]).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert ref.grad is None


def test_vlm_loss_weights_scale_each_sample_and_only_its_own_gradient(judge):
    """weights=(2, 0, 1): the first sample's loss counts twice, the second's not at all."""
    torch.manual_seed(1)
    ref, x = torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32, requires_grad=True)
    instr = ["make the red circle blue", "remove the green square", "add a red square at top left"]
    types = ["color", "remove", "add"]
    plain = V.vlm_loss(judge, ref, x, instr, types)
    weighted = V.vlm_loss(judge, ref, x, instr, types, weights=[2.0, 0.0, 1.0])
    alone = [V.vlm_loss(judge, ref[i:i + 1], x[i:i + 1], instr[i:i + 1], types[i:i + 1])
             for i in range(3)]
    assert torch.allclose(plain, sum(alone) / 3, atol=1e-5)
    assert torch.allclose(weighted, (2 * alone[0] + alone[2]) / 3, atol=1e-5)
    weighted.backward()
    assert x.grad[1].abs().sum() == 0 and x.grad[0].abs().sum() > 0
