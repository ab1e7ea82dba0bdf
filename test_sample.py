"""sample.py on any input, with one-line errors for bad input:  python -m pytest -q test_sample.py"""
import json
import os
import subprocess
import sys

import numpy as np
import torch
import pytest
from PIL import Image

import sample
import toyworld as tw

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    r = subprocess.run([sys.executable, "train.py", "--config", "tiny", "--max_steps=1",
                        "--eval_n=0", "--threads=1", f"--out_dir={out}"], cwd=HERE,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return str(out)


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
    return {"missing": (tmp_path / "nope.png", "no such file"),
            "directory": (tmp_path, "is a directory"),
            "empty": (tmp_path / "empty.png", "empty (0 bytes)"),
            "not an image": (tmp_path / "text.png", "not an image"),
            "truncated": (tmp_path / "trunc.png", "truncated")}


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "not an image", "truncated"])
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
    code, _, err = run(capsys, "--scene", "x", "--instr", "y", "--steps", "two")
    assert code == 2 and "invalid" in err
    code, _, err = run(capsys, "--scene", "a pink blob at top left on a white background",
                       "--instr", "y")
    assert code == 2 and "could not read" in err


def test_long_instruction_is_truncated_with_a_warning(ckpt, tmp_path, capsys):
    code, out, err = run(capsys, "--scene", "a red circle at top left on a white background",
                         "--instr", " ".join(["make the red circle blue"] * 20), "--ckpt", ckpt,
                         "--out", str(tmp_path / "o.png"))
    assert code == 0 and "truncated" in err
