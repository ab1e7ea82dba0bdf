"""make_data.py: prompts, reply validation, retries, resume and the summary with fixed replies, and
the generate path of a tiny random Qwen2.5-VL, offline:  python -m pytest -q test_make_data.py"""
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported: never download here

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import make_data as D  # noqa: E402
import real  # noqa: E402


def test_prompts_name_every_edit_type_and_carry_their_inputs():
    assert list(D.EDIT_TYPES) == ["add", "remove", "replace", "color", "material", "shape",
                                  "background", "style", "action", "text"]  # the paper's ten
    meaning, example = D.EDIT_TYPES["remove"]
    p = D.INSTRUCTION_PROMPT.format(caption="a dog on a sofa", type="remove", meaning=meaning,
                                    example=example)
    assert "a dog on a sofa" in p and "'remove'" in p and example in p
    assert p.endswith('{"type": "remove", "instruction": "<the instruction>", "object": '
                      '"<what it adds, removes or changes, in a few words>"}')
    c = D.CHECK_PROMPT.format(instruction="remove the dog")
    assert "Editing instruction: remove the dog" in c and '{"applicable": true or false' in c
    assert '{"caption": "<the sentence>"}' in D.CAPTION_PROMPT


def test_replies_are_parsed_and_validated():
    assert D.check_caption('{"caption": "a dog on a red sofa"}') == "a dog on a red sofa"
    assert D.check_caption('Sure!\n```json\n{"caption": " a dog\n on a sofa "}\n```') == \
        "a dog on a sofa"  # fences, words around it, stray whitespace
    bad = {'a dog on a sofa': "not JSON", '{"caption": ': "not JSON", '[1, 2]': "not JSON",
           '{"text": "a dog"}': "caption missing or empty", '{"caption": "  "}':
           "caption missing or empty", '{"caption": 3}': "caption missing or empty",
           json.dumps({"caption": "word " * 61}): "caption too long"}
    for reply, reason in bad.items():
        with pytest.raises(D.Rejected, match=reason):
            D.check_caption(reply)
    cap = "a dog on a sofa"
    assert D.check_instruction('{"type": "remove", "instruction": "remove the dog", "object": '
                               '"the dog"}', "remove", cap) == ("remove the dog", "the dog")
    assert D.check_instruction('{"instruction": "make the sofa blue"}', "color", cap) == \
        ("make the sofa blue", None)  # no type, no object: both optional
    for reply, reason in (('{"type": "zoom", "instruction": "zoom in"}', "unknown type"),
                          ('{"type": "add", "instruction": "add a hat"}', "another type"),
                          ('{"type": "color", "instruction": "A dog on a sofa."}', "equals the"),
                          ('{"type": "color", "instruction": ""}', "instruction missing"),
                          ('{"instruction": "make it red", "object": ""}', "object missing")):
        with pytest.raises(D.Rejected, match=reason):
            D.check_instruction(reply, "color", cap)
    ok = '{"applicable": true, "edited_caption": "a dog on a blue sofa"}'
    assert D.check_edit(ok, cap, "make the sofa blue") == "a dog on a blue sofa"
    assert D.check_edit(ok.replace("true", '"yes"'), cap, "x") == "a dog on a blue sofa"
    for reply, reason in (('{"applicable": false, "edited_caption": ""}', "not applicable"),
                          ('{"edited_caption": "a cat"}', "applicable missing"),
                          ('{"applicable": true, "edited_caption": "a dog on a sofa"}',
                           "equals the caption"),
                          ('{"applicable": true, "edited_caption": "make the sofa blue"}',
                           "equals the instruction"),
                          ('{"applicable": true}', "edited_caption missing")):
        with pytest.raises(D.Rejected, match=reason):
            D.check_edit(reply, cap, "make the sofa blue")


def test_a_removal_row_names_its_object():
    replies = {"caption": '{"caption": "a dog on a sofa"}',
               "instruction": '{"type": "remove", "instruction": "remove the dog", '
                              '"object": "the dog"}',
               "check": '{"applicable": true, "edited_caption": "an empty sofa"}'}

    def vlm_fn(images, prompt):
        return replies["caption" if prompt == D.CAPTION_PROMPT else
                       "instruction" if prompt.startswith("You write") else "check"]
    rows, rejected = D.rows_for(vlm_fn, Image.new("RGB", (8, 8)), ["remove", "color"], 0)
    assert rows == [{"instruction": "remove the dog", "edited_caption": "an empty sofa",
                     "type": "remove", "caption": "a dog on a sofa", "object": "the dog"}]
    assert rejected == ["color: another type than asked"]  # (the same reply for "color")


COLOURS = ("red", "green", "blue")  # each photo's colour names it (JPEG: its largest channel)
REPLIES = {  # fixed replies, in order, by (prompt kind, what it is about)
    ("caption", "red"): ['{"caption": "a red square"}'],
    ("caption", "green"): ["it is green", '```json\n{"caption": "a green square"}\n```'],
    ("caption", "blue"): ['{"caption": "a blue square"}'] * 2,
    ("instruction", "a red square", "color"): ['{"type": "color", "instruction": "make it blue"}'],
    ("instruction", "a red square", "add"): ['{"type": "add", "instruction": "add a hat"}'],
    ("instruction", "a green square", "color"): ['{"type": "add", "instruction": "add a hat"}',
                                                 '{"type": "color", "instruction": "make it red"}'],
    ("instruction", "a green square", "add"): ['{"type": "add", "instruction": "add a tree"}'],
    ("instruction", "a blue square", "color"): ['{"instruction": "A blue square."}'] * 4,
    ("instruction", "a blue square", "add"): ['{"instruction": "a blue square"}'] * 4,
    ("check", "make it blue"): ['{"applicable": true, "edited_caption": "a blue square"}'],
    ("check", "add a hat"): ['{"applicable": false, "edited_caption": ""}'] * 2,
    ("check", "make it red"): ['{"applicable": true, "edited_caption": "a red square"}'],
    ("check", "add a tree"): ['{"applicable": "yes", "edited_caption": "a square, a tree"}'],
}


def scripted():
    """A vlm_fn answering from REPLIES; calls records (prompt kind, number of images)."""
    queues, calls = {k: list(v) for k, v in REPLIES.items()}, []

    def vlm_fn(images, prompt):
        if prompt == D.CAPTION_PROMPT:
            px = images[0].getpixel((5, 5))
            key = ("caption", COLOURS[px.index(max(px))])
        elif prompt.startswith("You write"):
            caption = prompt.split("A photo shows: ")[1].split("\n")[0]
            key = ("instruction", caption, prompt.split("of the type '")[1].split("'")[0])
        else:
            key = ("check", prompt.split("Editing instruction: ")[1].split("\n")[0])
        calls.append((key[0], len(images)))
        return queues[key].pop(0)
    return vlm_fn, calls


def test_fixed_replies_are_retried_rejected_summarised_and_resumed(tmp_path, capsys):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for name, colour in (("a.png", (255, 0, 0)), ("sub/b.jpg", (0, 255, 0)),
                         ("c.png", (0, 0, 255))):
        Image.new("RGB", (120, 80), colour).save(photos / name)
    (photos / "d.png").write_text("not an image")
    out = tmp_path / "data" / "edits.jsonl"
    args = ["--images", str(photos), "--out", str(out), "--per_image", "2", "--types",
            "color,add", "--retries", "1"]
    vlm_fn, calls = scripted()
    written, rejected = D.main(args, vlm_fn=vlm_fn)
    rows = real.read_jsonl(str(out))  # what train.py --data reads: every row valid
    assert written == 3 and sorted((os.path.relpath(r["image"], photos), r["type"],
                                    r["instruction"], r["edited_caption"], r["caption"])
                                   for r in rows) == [
        ("a.png", "color", "make it blue", "a blue square", "a red square"),
        ("sub/b.jpg", "add", "add a tree", "a square, a tree", "a green square"),
        ("sub/b.jpg", "color", "make it red", "a red square", "a green square")]
    assert json.loads(out.read_text().splitlines()[0])["image"] == "../photos/a.png"
    assert rejected == {"add: not applicable": 1, "color: instruction equals the caption": 1,
                        "add: instruction equals the caption": 1, "unreadable image": 2}
    summary = capsys.readouterr().out
    assert "wrote 3 rows" in summary and "rejected 5" in summary and "unreadable image" in summary
    kinds = {k: sum(1 for c in calls if c[0] == k) for k in ("caption", "instruction", "check")}
    assert kinds == {"caption": 4, "instruction": 9, "check": 5}  # retries: 1 each at most
    assert all(n == (0 if k == "instruction" else 1) for k, n in calls)  # the LLM part: text

    # resumed: photos with rows are skipped; c.png (every row rejected) is asked again; a line
    # torn by a kill is dropped
    with open(out, "a") as f:
        f.write('{"image": "../photos/c.png", "instr')
    calls.clear()
    written, rejected = D.main(args, vlm_fn=vlm_fn)
    assert written == 0 and [k for k, _ in calls] == ["caption"] + ["instruction"] * 4
    assert len(real.read_jsonl(str(out))) == 3
    assert "dropped a broken line" in capsys.readouterr().err


def test_bad_options_are_one_line_errors(tmp_path):
    for args, msg in ((["--types", "add,zoom"], "unknown type 'zoom'"),
                      (["--per_image", "0"], "--per_image must be"),
                      ([], "no images in")):
        with pytest.raises(SystemExit) as e:
            D.main(["--images", str(tmp_path), "--out", str(tmp_path / "o.jsonl"), *args],
                   vlm_fn=lambda i, p: "")
        assert msg in str(e.value.code) and "\n" not in str(e.value.code)


def test_a_tiny_qwen_runs_the_generate_path(tmp_path):
    """transformers generate on a random Qwen2.5-VL: text-only (the LLM part) and with an image;
    its replies are noise, so each is asked again, then rejected and counted."""
    import eval as E
    torch.manual_seed(0)
    judge = real.load_vlm("unused", tiny=True)
    greedy = E.vlm_reward_judge(judge, max_new_tokens=6)
    img = Image.new("RGB", (90, 60), (200, 30, 30))
    for images in ([], [img]):
        a, b = greedy(images, D.CAPTION_PROMPT), greedy(images, D.CAPTION_PROMPT)
        assert isinstance(a, str) and a == b and len(a.split()) <= 6  # greedy: deterministic
    sampled = E.vlm_reward_judge(judge, max_new_tokens=6, do_sample=True)
    replies = []
    (tmp_path / "p").mkdir()
    img.save(tmp_path / "p" / "a.png")
    stats = D.make_data(lambda ims, p: replies.append(sampled(ims, p)) or replies[-1],
                        [str(tmp_path / "p" / "a.png")], str(tmp_path / "o.jsonl"),
                        types=("add",), retries=1, image_size=56)
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    assert stats == {"caption: not JSON": 1, "written": 0}
    assert (tmp_path / "o.jsonl").read_text() == ""
