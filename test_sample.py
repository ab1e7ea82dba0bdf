"""sample.py on any input (an image, a folder, a JSONL; any mode and size), with one-line errors for
bad input and bad --out, and warnings for what the text encoder cannot read:
python -m pytest -q test_sample.py (the real path: test_export.py)"""
import json
import os

import numpy as np
import pytest
from PIL import Image

import sample
import toyworld as tw

HERE = os.path.dirname(os.path.abspath(__file__))


def run(capsys, *argv):
    """-> (exit code, stdout, stderr) of sample.main(argv)."""
    try:
        sample.main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16", "LA"])
def test_any_image_mode_and_size_is_edited(ckpt, tmp_path, capsys, mode):
    im = tw.render(tw.Scene("white", (("red", "circle"), None, None, None))).resize((50, 70))
    im = {"I;16": lambda: Image.fromarray((np.asarray(im.convert("L"), np.uint16) * 257)),
          "P": lambda: im.convert("P")}.get(mode, lambda: im.convert(mode))()
    src, dst = tmp_path / "in.png", tmp_path / "out.png"
    im.save(src)
    code, out, err = run(capsys, "--image", str(src), "--instr", "make the red circle blue",
                         "--ckpt", ckpt, "--out", str(dst))
    assert code == 0, err
    assert Image.open(dst).size == (32, 32) and Image.open(dst).mode == "RGB"
    assert str(dst) in out


def test_scene_caption_renders_an_input(ckpt, tmp_path, capsys):
    code, out, err = run(capsys, "--scene", "a red circle at top left on a white background",
                         "--instr", "remove the red circle", "--ckpt", ckpt,
                         "--out", str(tmp_path / "o.png"))
    assert code == 0, err
    assert sample.scene_from_caption("a red circle at top left and a blue square at bottom "
                                     "right on a gray background") == \
        tw.Scene("gray", (("red", "circle"), None, None, ("blue", "square")))


def _bad_files(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    tw.render(tw.Scene("white", (None,) * 4)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[:len(data) // 2])
    (tmp_path / "no_images").mkdir()
    (tmp_path / "no_images" / "notes.txt").write_text("x")
    # 20000 x 20000: past PIL's decompression-bomb limit (a 1-bit PNG of it is 48 KB on disk)
    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")
    return {"missing": (tmp_path / "nope.png", "no such file"),
            "folder without images": (tmp_path / "no_images", "no images in"),
            "empty": (tmp_path / "empty.png", "empty (0 bytes)"),
            "not an image": (tmp_path / "text.png", "not an image"),
            "truncated": (tmp_path / "trunc.png", "truncated"),
            "bomb": (tmp_path / "bomb.png", "too large to edit")}


@pytest.mark.parametrize("case", ["missing", "folder without images", "empty", "not an image",
                                  "truncated", "bomb"])
def test_bad_image_is_a_one_line_error(ckpt, tmp_path, capsys, case):
    path, msg = _bad_files(tmp_path)[case]
    code, out, err = run(capsys, "--image", str(path), "--instr", "do nothing", "--ckpt", ckpt)
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("instr", ["", "   "])
def test_empty_instruction_is_an_error(ckpt, capsys, instr):
    code, out, err = run(capsys, "--scene", "a red circle at top left on a white background",
                         "--instr", instr, "--ckpt", ckpt)
    assert code == 2 and "empty" in err


def test_bad_checkpoints_are_errors(ckpt, tmp_path, capsys):
    args = ["--scene", "a red circle at top left on a white background", "--instr", "do nothing"]
    code, _, err = run(capsys, *args, "--ckpt", str(tmp_path / "none"))
    assert code == 2 and "no checkpoint" in err
    code, _, err = run(capsys, *args, "--ckpt", str(tmp_path))  # a dir without a checkpoint
    assert code == 2 and "no checkpoint" in err
    # a checkpoint whose weights do not fit its preset's model (another shape)
    other = tmp_path / "other" / "ckpt"
    other.mkdir(parents=True)
    st = json.load(open(f"{ckpt}/ckpt/state.json"))
    from safetensors.torch import load_file, save_file
    w = load_file(f"{ckpt}/ckpt/model.safetensors")
    w = {k: (v[..., :1].contiguous() if k.endswith("proj_out.weight") else v) for k, v in w.items()}
    save_file(w, f"{other}/model.safetensors")
    json.dump(st, open(f"{other}/state.json", "w"))
    code, _, err = run(capsys, *args, "--ckpt", str(other.parent))
    assert code == 2 and "does not match" in err and len(err.strip().splitlines()) == 1, err


def test_bad_options_are_errors(capsys):
    code, _, err = run(capsys, "--scene", "x", "--instr", "y", "--bogus", "1")
    assert code == 2 and "unrecognized arguments" in err
    code, _, err = run(capsys, "--scene", "x", "--image", "a.png", "--instr", "y")
    assert code == 2 and "not allowed with" in err
    code, _, err = run(capsys, "--image", "a.png")
    assert code == 2 and "--instr is required" in err
    code, _, err = run(capsys, "--scene", "a pink blob at top left on a white background",
                       "--instr", "y")
    assert code == 2 and "--scene: name each object" in err and "colours: red" in err
    code, _, err = run(capsys, "--scene", "a red circle somewhere", "--instr", "y")
    assert code == 2 and "--scene: could not read" in err


def test_long_instruction_is_truncated_with_a_warning(ckpt, tmp_path, capsys):
    code, out, err = run(capsys, "--scene", "a red circle at top left on a white background",
                         "--instr", " ".join(["make the red circle blue"] * 20), "--ckpt", ckpt,
                         "--out", str(tmp_path / "o.png"))
    assert code == 0 and "truncated" in err


def test_out_paths(ckpt, tmp_path, capsys):
    args = ["--scene", "a red circle at top left on a white background", "--instr",
            "make the red circle blue", "--ckpt", ckpt]
    new = tmp_path / "not" / "yet" / "edited.jpg"  # folders --out needs are created
    code, out, err = run(capsys, *args, "--out", str(new))
    assert code == 0 and Image.open(new).size == (32, 32), err
    assert "created if missing" in " ".join(_help(capsys).split())  # and --help says so
    for out, msg in ((tmp_path, "is a folder"), (tmp_path / "edited", "no extension"),
                     (tmp_path / "edited.gif", "unknown image extension '.gif'")):
        code, _, err = run(capsys, *args, "--out", str(out))
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
        assert ".png, .jpg" in err or msg == "is a folder"


def _help(capsys):
    with pytest.raises(SystemExit):
        sample.main(["--help"])
    return capsys.readouterr().out


def test_unknown_words_are_warned_about(ckpt, tmp_path, capsys):
    args = ["--scene", "a red circle at top left on a white background", "--ckpt", ckpt,
            "--out", str(tmp_path / "o.png")]
    for instr, unknown in (("xyzzy plugh", "xyzzy plugh"), ("make it 🙂", "🙂"),
                           ("把圆变成蓝色", "把圆变成蓝色")):
        code, out, err = run(capsys, *args, "--instr", instr)
        assert code == 0 and f"words the editor never saw (read as [UNK]): {unknown}" in err, err
    code, out, err = run(capsys, *args, "--instr", "make the red circle blue")
    assert code == 0 and "warning" not in err and "Loading weights" not in err, err


def test_folder_and_jsonl_inputs_write_one_output_each(ckpt, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    for i, name in enumerate(("a.png", "b.jpg", "c.webp")):
        tw.render(tw.Scene("white", (("red", "circle"), None, None, None))).resize(
            (40 + i, 40)).save(d / name)
    (d / "readme.txt").write_text("not an image: skipped")
    code, out, err = run(capsys, "--image", str(d), "--instr", "remove the red circle",
                         "--ckpt", ckpt, "--out", str(tmp_path / "out"))
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "out")) == ["a.png", "b.png", "c.png"]
    assert "editing: 100%" in err  # a progress bar over the inputs
    rows = [{"image": "in/a.png", "instruction": "make the red circle blue"},
            {"image": "in/b.jpg"}]  # no instruction: --instr fills it
    (tmp_path / "edits.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run(capsys, "--image", str(tmp_path / "edits.jsonl"), "--ckpt", ckpt,
                         "--out", str(tmp_path / "out2"))
    assert code == 2 and "row 2" in err and "no instruction" in err  # and no --instr
    code, out, err = run(capsys, "--image", str(tmp_path / "edits.jsonl"), "--ckpt", ckpt,
                         "--instr", "do nothing", "--out", str(tmp_path / "out2"), "--keep_size")
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "out2")) == ["00000_a.png", "00001_b.png"]
    assert Image.open(tmp_path / "out2" / "00001_b.png").size == (41, 40)  # --keep_size
    (tmp_path / "file.png").write_bytes(b"x")
    code, out, err = run(capsys, "--image", str(d), "--instr", "x", "--ckpt", ckpt,
                         "--out", str(tmp_path / "file.png"))
    assert code == 2 and "is a file" in err


def test_real_run_without_its_base_weights_is_one_line_naming_them(ckpt, tmp_path, capsys,
                                                                   monkeypatch):
    """A real preset's run whose base model is neither cached nor reachable (offline)."""
    import huggingface_hub.constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    (tmp_path / "run" / "ckpt").mkdir(parents=True)
    st = json.load(open(f"{ckpt}/ckpt/state.json"))
    st["config"].update(kind="real", prior="nobody/Sana_600M_512px_diffusers", tiny=False,
                        resolution=512)
    json.dump(st, open(tmp_path / "run" / "ckpt" / "state.json", "w"))
    os.link(f"{ckpt}/ckpt/model.safetensors", tmp_path / "run" / "ckpt" / "model.safetensors")
    Image.new("RGB", (64, 48)).save(tmp_path / "in.png")
    code, out, err = run(capsys, "--image", str(tmp_path / "in.png"), "--instr", "add a hat",
                         "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "o.png"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: cannot load 'nobody/Sana_600M_512px_diffusers'")
    assert "hf download nobody/Sana_600M_512px_diffusers" in err and "--prior=PATH" in err
