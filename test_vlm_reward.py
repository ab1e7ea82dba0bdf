"""Tests of the judge wrapper (vlm_reward.py) on a tiny random Qwen2.5-VL:
python -m pytest -q test_vlm_reward.py"""
import random

import pytest
import torch

import judge_data as J
import toyworld as tw
import vlm_reward as V


@pytest.fixture(scope="module")
def judge():
    torch.manual_seed(0)
    tok = J.judge_tokenizer()
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


def test_edit_questions_follow_the_paper():
    qs = V.edit_questions("remove the red circle at top left")
    assert qs[0] == (V.HAS_Q.format(object="red circle at top left"), 1, False)
    assert qs[1][1:] == (2, True) and "ignoring the presence of the red circle" in qs[1][0]
    qs = V.edit_questions("make the red circle blue")
    assert [q[1:] for q in qs] == [(2, True), (2, True)]
    assert "make the red circle blue" in qs[0][0] and "same as the first" in qs[1][0]


def test_question_labels_follow_the_scene():
    rng = random.Random(1)
    for _ in range(500):
        t, q, (ref, cand), label, kind, touched = J.pair_question(rng)
        if kind == "target":
            assert label
        if kind == "unchanged":
            assert label == (t == "same_except")
        if kind == "extra_change" and t == "same_except":
            assert not label
    s = tw.Scene("white", (("red", "circle"), None, None, None))
    for _ in range(200):
        t, q, label = J.single_question(rng, s)
        if t == "background":
            assert label == ("white" in q)
        if t == "position":
            assert label == ("red circle at top left" in q)
