"""The whole real path on the tiny twins, offline: train one step of `base --tiny=True`, edit photos
with sample.py, export, load the export, edit with it, and run GEdit-Bench with eval.py.
python -m pytest -q test_export.py"""
import json
import os
import subprocess
import sys

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported: never download here

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import eval as E  # noqa: E402
import export  # noqa: E402
from test_sample import run as edit  # noqa: E402  (sample.main in-process)
import sample  # noqa: E402
from test_eval import GEDIT_ROWS, fixed_judge, write_gedit  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def train(out, *args):
    r = subprocess.run([sys.executable, "train.py", *args, "--max_steps=1", "--threads=1",
                        f"--out_dir={out}"], cwd=HERE, capture_output=True, text=True,
                       timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return str(out)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real preset's run: SANA-like DC-AE latents at 512 px, one warm-up and one NP-Edit step."""
    return train(tmp_path_factory.mktemp("base"), "--config", "base", "--tiny=True",
                 "--warmup_steps=1")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(d / "rgb.jpg")
    Image.fromarray(rng.integers(0, 256, (300, 200), dtype=np.uint8), "L").save(d / "gray.png")
    return d


def test_sample_edits_photos_of_any_size_at_the_runs_resolution(run, photos, tmp_path, capsys):
    for name, size, mode in (("rgb.jpg", (640, 480), "RGB"), ("gray.png", (200, 300), "L")):
        src = Image.open(photos / name)
        assert (src.size, src.mode) == (size, mode)
        out = tmp_path / f"{name}.png"
        code, _, err = edit(capsys, "--ckpt", run, "--image", str(photos / name),
                            "--instr", "make the cat a dog", "--out", str(out))
        assert code == 0, err
        assert "Loading weights" not in err and "Traceback" not in err  # no loading noise
        square = Image.open(out)
        assert square.size == (512, 512) and square.mode == "RGB"  # the run's resolution
        kept = tmp_path / "keep" / f"{name}.png"  # (a folder that does not exist yet)
        code, _, err = edit(capsys, "--ckpt", run, "--image", str(photos / name), "--instr",
                            "make the cat a dog", "--out", str(kept), "--keep_size")
        assert code == 0, err
        full = np.asarray(Image.open(kept))
        assert full.shape == (size[1], size[0], 3)
        # the editor saw the center square; the margins outside it are the input's, untouched
        s, w, h = min(size), *size
        left, top = (w - s) // 2, (h - s) // 2
        inp = np.asarray(src.convert("RGB"))
        outside = np.ones((h, w), bool)
        outside[top:top + s, left:left + s] = False
        assert np.array_equal(full[outside], inp[outside])
        assert not np.array_equal(full[~outside], inp[~outside])  # and the square is edited


def test_export_loads_in_diffusers_and_edits_like_the_run(run, photos, tmp_path, capsys):
    from diffusers import SanaTransformer2DModel
    from safetensors.torch import load_file
    out = tmp_path / "exported"
    export.main(["--ckpt", run, "--out", str(out)])
    assert "wrote" in capsys.readouterr().out
    transformer = SanaTransformer2DModel.from_pretrained(str(out))
    assert transformer.config.in_channels == 64 and transformer.config.out_channels == 32
    ema = {k[len("ema.transformer."):]: v for k, v in
           load_file(f"{run}/ckpt/model.safetensors").items() if k.startswith("ema.transformer.")}
    sd = transformer.state_dict()
    assert sd.keys() == ema.keys() and all(torch.equal(sd[k], ema[k]) for k in sd)  # the EMA
    info = json.load(open(out / export.EDITOR_JSON))
    assert info["kind"] == "real"
    assert info["prior"] == "Efficient-Large-Model/Sana_600M_512px_diffusers"
    assert (info["resolution"], info["shift"], info["tiny"], info["preset"]) == \
        (512, 6.0, True, "base (tiny twins)")
    card = (out / "README.md").read_text()
    assert "Sana_600M_512px_diffusers" in card and "Qwen2.5-VL-3B" in card
    assert "npedit step 1" in card
    assert "from_pretrained" in card and "sample.py --ckpt" in card
    # sample.py on the export gives the same pixels as on the run
    for ckpt, name in ((run, "a.png"), (str(out), "b.png")):
        code, _, err = edit(capsys, "--ckpt", ckpt, "--image", str(photos / "rgb.jpg"),
                            "--instr", "add a hat", "--out", str(tmp_path / name))
        assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")),
                          np.asarray(Image.open(tmp_path / "b.png")))
    # an existing folder is refused unless --force
    with pytest.raises(SystemExit) as e:
        export.main(["--ckpt", run, "--out", str(out)])
    assert e.value.code == 2 and "exists; pass --force" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # nor, even forced, the run's own folder
        export.main(["--ckpt", run, "--out", run, "--force"])
    assert "holds the run" in capsys.readouterr().err and os.path.exists(f"{run}/ckpt")
    (out / "marker").write_text("old")
    export.main(["--ckpt", run, "--out", str(out), "--force"])
    assert not (out / "marker").exists() and (out / "config.json").exists()


def test_small_world_export_carries_its_text_encoder(tmp_path, capsys):
    small = train(tmp_path / "tiny", "--config", "tiny", "--eval_n=0")
    out = tmp_path / "exported"
    export.main(["--ckpt", small, "--out", str(out)])
    assert (out / "text_encoder" / "config.json").exists() and (out / "tokenizer").is_dir()
    args = ["--scene", "a red circle at top left on a white background", "--instr",
            "make the red circle blue"]
    for ckpt, name in ((small, "a.png"), (str(out), "b.png")):
        code, _, err = edit(capsys, *args, "--ckpt", ckpt, "--out", str(tmp_path / name))
        assert code == 0, err
    a, b = (np.asarray(Image.open(tmp_path / n)) for n in ("a.png", "b.png"))
    assert a.shape == (32, 32, 3) and np.array_equal(a, b)


def test_gedit_edits_then_scores_and_resumes(run, tmp_path, capsys, monkeypatch):
    layout = "arrow"
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        layout = "imagefolder"
    src, edited = write_gedit(tmp_path / "gedit", layout), tmp_path / "edited"
    res = E.main(["--gedit", src, "--ckpt", run, "--edited", str(edited)], judge_fn=fixed_judge)
    out = capsys.readouterr().out
    assert "edited 3 items (0 done already)" in out and E.NOT_COMPARABLE in out
    for key, task, lang, _, size in GEDIT_ROWS[:3]:  # each at its input's size, GEdit's layout
        assert Image.open(edited / "fullset" / task / lang / f"{key}.png").size == size
    assert not (edited / "fullset" / "color_alter" / "cn").exists()  # --language en
    assert res["groups"]["color_alter"]["SC"] == 6.0 and res["overall"]["SC"] == 5.0
    assert json.load(open(edited / "scores.json"))["groups"]["subject-add"]["n"] == 1
    # a second call edits nothing: it does not even load the editor
    stamp = os.path.getmtime(edited / "fullset" / "subject-add" / "en" / "k3.png")
    monkeypatch.setattr(sample, "load", lambda *a: pytest.fail("the editor was loaded again"))
    res2 = E.main(["--gedit", src, "--ckpt", run, "--edited", str(edited)], judge_fn=fixed_judge)
    assert "all 3 items are edited already" in capsys.readouterr().out
    assert res2["overall"] == res["overall"]
    assert os.path.getmtime(edited / "fullset" / "subject-add" / "en" / "k3.png") == stamp
