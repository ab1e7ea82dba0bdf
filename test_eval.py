"""eval.py: the VIEScore protocol with fake and tiny judges:  python -m pytest -q test_eval.py"""
import json

import pytest
import torch

import eval as E
import toyworld as tw
import vlm_reward as V


def test_parse_scores_reads_json_and_survives_malformed_replies():
    assert E.parse_scores('{"reasoning": "fine", "score": [7, 9]}') == [7.0, 9.0]
    assert E.parse_scores('score: [3.5, 12]') == [3.5, 10.0]  # clipped to 0-10
    assert E.parse_scores("I would say 4 and 6 out of 10") == [4.0, 6.0]
    assert E.parse_scores('{"score": [5]}') is None
    assert E.parse_scores("no idea") is None
    assert E.parse_scores("") is None


def test_prompts_carry_the_instruction():
    assert "make the cat blue" in E.SC_PROMPT.format(instruction="make the cat blue")
    seen = []
    E.viescore(lambda ims, p: seen.append((len(ims), p)) or '{"score": [5, 5]}', None, None, "x")
    assert seen[0][0] == 2 and "Instruction: x" in seen[0][1]
    assert seen[1][0] == 1 and '{"reasoning"' in seen[1][1] and "{{" not in seen[1][1]


def test_viescore_and_aggregation_with_fixed_judge_replies():
    replies = iter(['{"score": [8, 2]}', '{"score": [9, 4]}',    # item 1: SC 2, PQ 4
                    '{"score": [10, 10]}', '{"score": [9, 9]}',  # item 2: SC 10, PQ 9
                    'garbage', '{"score": [1, 1]}'])             # item 3: unreadable
    img = tw.render(tw.Scene("white", (None,) * 4))
    rows = [(g, E.viescore(lambda ims, p: next(replies), img, img, "x"))
            for g in ("color", "color", "style")]
    assert rows[0][1] == {"SC": 2.0, "PQ": 4.0, "O": pytest.approx(8 ** 0.5)}
    assert rows[2][1] is None
    res = E.aggregate(rows)
    assert res["groups"]["color"]["SC"] == 6.0 and res["groups"]["color"]["n"] == 2
    assert res["groups"]["style"]["unreadable"] == 1
    # mean over groups, not over items (style counts as 0: no readable item)
    assert res["overall"]["SC"] == pytest.approx((6.0 + 0.0) / 2)


def test_tiny_random_vlm_runs_the_protocol(tmp_path):
    torch.manual_seed(0)
    tok = V.judge_tokenizer()
    vlm = V.Qwen2_5_VLForConditionalGeneration(V.tiny_judge_config(tok, 32, 32, 1)).eval()
    judge_fn = E.vlm_reward_judge(V.Judge(vlm, tok), max_new_tokens=4)
    img = tw.render(tw.Scene("gray", (("red", "circle"), None, None, None))).resize((64, 48))
    img.save(tmp_path / "a.png")
    img.save(tmp_path / "edited_a.png")
    (tmp_path / "items.jsonl").write_text(json.dumps(
        {"image": "a.png", "instruction": "make the red circle blue", "group": "color",
         "id": "edited_a"}) + "\n")
    items = E.read_items(str(tmp_path))
    res = E.gedit(items, str(tmp_path), judge_fn)
    assert res["groups"]["color"]["n"] == 1  # a random judge's reply is counted as unreadable
    assert res["groups"]["color"]["unreadable"] == 1


def test_items_file_errors_name_the_line(tmp_path):
    p = tmp_path / "items.jsonl"
    p.write_text('{"image": "a.png", "group": "g"}\n')
    with pytest.raises(ValueError, match="items.jsonl:1: missing field.*instruction"):
        E.read_items(str(p))
    p.write_text('{"image": "nope.png", "instruction": "x", "group": "g"}\n')
    with pytest.raises(ValueError, match="items.jsonl:1: cannot read image"):
        E.read_items(str(p))
    p.write_text("not json\n")
    with pytest.raises(ValueError, match="items.jsonl:1: not JSON"):
        E.read_items(str(p))
