"""eval.py: the VIEScore protocol with fixed and tiny judges, and GEdit-Bench in the layouts of its
release, offline:  python -m pytest -q test_eval.py"""
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
    with pytest.raises(ValueError, match="items.jsonl:1: field 'instruction' is missing"):
        E.read_items(str(p))
    p.write_text('{"image": "nope.png", "instruction": "x", "group": "g"}\n')
    with pytest.raises(ValueError, match="items.jsonl:1: image 'nope.png' not found"):
        E.read_items(str(p))
    p.write_text("not json\n")
    with pytest.raises(ValueError, match="items.jsonl:1: invalid JSON"):
        E.read_items(str(p))
    p.write_text('{"image": "a.png", "instruction": "x", "group": "g"}\n')
    (tmp_path / "a.png").write_text("not an image")
    with pytest.raises(ValueError, match="items.jsonl: item 1: cannot read image"):
        E.read_items(str(p))


# ----------------------------------------------------------------------------- GEdit-Bench (b)

GEDIT_ROWS = [  # (key, task_type, language, instruction, source size)
    ("k1", "color_alter", "en", "make the car red", (64, 48)),
    ("k2", "color_alter", "en", "make the sky green", (40, 40)),
    ("k3", "subject-add", "en", "add a hat", (30, 50)),
    ("k1", "color_alter", "cn", "把车变成红色", (64, 48)),
]


def fixed_judge(images, prompt):
    """Known replies: SC (two images) by the instruction's group, PQ (one image) always 7 / 9."""
    if len(images) == 1:
        return '{"reasoning": "fine", "score": [7, 9]}'
    return '{"score": [8, 6]}' if "make the" in prompt else 'scores: [4, 9]'


def write_gedit(root, layout="arrow"):
    """A 4-row GEdit-Bench in the release's layout (an Arrow stream of its fields, as datasets
    writes it) or its image-folder form (metadata.jsonl beside the images)."""
    import io
    from PIL import Image
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for key, task, lang, instr, size in GEDIT_ROWS:
        img = Image.new("RGB", size, (200, 40, 40))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        row = {"key": key, "task_type": task, "instruction": instr, "instruction_language": lang,
               "Intersection_exist": True}
        if layout == "arrow":
            image = {"bytes": buf.getvalue(), "path": None}
            rows.append({**row, "input_image": image, "input_image_raw": image})
        else:
            img.save(root / f"{key}_{lang}.png")
            rows.append({**row, "input_image": f"{key}_{lang}.png"})
    if layout == "arrow":
        import pyarrow as pa
        table = pa.Table.from_pylist(rows)
        (root / "train").mkdir(exist_ok=True)
        with pa.OSFile(str(root / "train" / "data-00000-of-00001.arrow"), "wb") as f:
            with pa.ipc.new_stream(f, table.schema) as w:
                w.write_table(table)
    else:
        (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(root)


def gedit(capsys, *argv, judge_fn=fixed_judge):
    """-> (result or exit code, stdout, stderr) of eval.py --gedit in-process."""
    try:
        res = E.main(["--gedit", *argv], judge_fn=judge_fn)
    except SystemExit as e:
        res = e.code
    out, err = capsys.readouterr()
    return res, out, err


def premade_edits(edited, rows=GEDIT_ROWS[:3]):
    from PIL import Image
    for key, task, lang, _, size in rows:
        (edited / "fullset" / task / lang).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (10, 200, 10)).save(edited / "fullset" / task / lang / f"{key}.png")


@pytest.mark.parametrize("layout", ["arrow", "imagefolder"])
def test_gedit_release_layouts_score_each_group(tmp_path, capsys, layout):
    if layout == "arrow":
        pytest.importorskip("pyarrow")
    src, edited = write_gedit(tmp_path / "gedit", layout), tmp_path / "edited"
    premade_edits(edited)  # every English item edited already: no editor is loaded
    res, out, err = gedit(capsys, src, "--edited", str(edited))
    assert "error" not in err and "all 3 items are edited already" in out
    assert E.NOT_COMPARABLE in out and "VIEScore: 100%" in err  # the progress bar
    color, add = res["groups"]["color_alter"], res["groups"]["subject-add"]
    assert color == {"SC": 6.0, "PQ": 7.0, "O": pytest.approx(42 ** 0.5), "n": 2, "unreadable": 0}
    assert add["SC"] == 4.0 and add["n"] == 1 and set(res["groups"]) == {"color_alter",
                                                                        "subject-add"}
    assert res["overall"]["SC"] == 5.0  # the mean over groups, not over the 3 items
    saved = json.load(open(edited / "scores.json"))
    assert saved["groups"] == json.loads(json.dumps(res["groups"])) and saved["note"]
    if layout == "arrow":  # the release's input images, written out in GEdit's own layout
        from PIL import Image
        assert Image.open(edited / "fullset/subject-add/en/k3_SRCIMG.png").size == (30, 50)
    # the Chinese row has no edit: asking for it without an editor says what is missing
    res, out, err = gedit(capsys, src, "--edited", str(edited), "--language", "all")
    assert res == 2 and "1 of 4 items have no edit" in err and "--ckpt" in err


def test_gedit_folder_without_metadata_is_a_one_line_error(tmp_path, capsys):
    premade_edits(tmp_path / "gedit")  # images in GEdit's layout, but no metadata
    res, out, err = gedit(capsys, str(tmp_path / "gedit"), "--edited", str(tmp_path / "e"))
    assert res == 2 and len(err.strip().splitlines()) == 1, err
    assert "no GEdit-Bench metadata" in err and "hf download stepfun-ai/GEdit-Bench" in err
    src = write_gedit(tmp_path / "bad", "imagefolder")
    meta = tmp_path / "bad" / "metadata.jsonl"
    meta.write_text(meta.read_text().replace('"instruction": "add a hat", ', ""))
    res, out, err = gedit(capsys, src, "--edited", str(tmp_path / "e"))
    assert res == 2 and "row 3: missing field(s) instruction" in err
    res, out, err = gedit(capsys, src)  # no --ckpt and no --edited
    assert res == 2 and "--ckpt" in err
