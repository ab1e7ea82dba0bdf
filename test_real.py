"""Tests of the real presets' code path (real.py) on its tiny random twins, offline, seconds each:
python -m pytest -q test_real.py"""
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported: never download here

import huggingface_hub.constants  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import real  # noqa: E402
from checkpoint import load_real_editor  # noqa: E402
import vlm_reward as V  # noqa: E402


@pytest.fixture(scope="module")
def t2i():
    torch.manual_seed(0)
    return real.load_text_to_image("unused", tiny=True, resolution=512)


@pytest.fixture(scope="module")
def judge():
    torch.manual_seed(0)
    return real.load_vlm("unused", tiny=True)


# ----------------------------------------------------------------------------- text-to-image

def test_tiny_text_to_image_runs_the_real_path(t2i):
    transformer, vae, text_encoder, tokenizer = t2i
    assert transformer.config.sample_size == 16 and vae.spatial_compression_ratio == 32
    assert transformer.config.caption_channels == text_encoder.config.hidden_size
    text, mask = real.TextCache(text_encoder, tokenizer)(["make the cat a dog", "add a hat"])
    latents = torch.randn(2, 32, 16, 16)
    v = transformer(latents, encoder_hidden_states=text, encoder_attention_mask=mask,
                    timestep=torch.tensor([500.0, 900.0]), return_dict=False)[0]
    assert v.shape == latents.shape and torch.isfinite(v).all()

    x = torch.rand(2, 3, 512, 512) * 2 - 1
    z = real.vae_encode(vae, x)
    assert z.shape == (2, 32, 16, 16) and not z.requires_grad  # encoding is frozen
    z = z.clone().requires_grad_()
    y = real.vae_decode(vae, z)
    assert y.shape == (2, 3, 512, 512)
    y[:, :, :100].square().mean().backward()  # a loss on pixels reaches the latents
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_text_cache_memoises_and_drops_to_the_empty_prompt(t2i):
    _, _, text_encoder, tokenizer = t2i
    calls = []
    hook = text_encoder.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        cache = real.TextCache(text_encoder, tokenizer)
        texts = ["make the cat a dog", "add a hat", " Make the cat a DOG"]
        h1, m1 = cache(texts)
        assert len(calls) == 1 and len(cache.memo) == 2  # one batch, duplicates encoded once
        assert torch.equal(h1[0], h1[2])  # lower-cased and stripped, as SANA's pipeline does
        h2, m2 = cache(texts)
        assert len(calls) == 1 and torch.equal(h1, h2) and torch.equal(m1, m2)
        drop = torch.tensor([False, True, True])
        h3, m3 = cache(texts, drop=drop)
        assert len(calls) == 2  # only "" was new
    finally:
        hook.remove()
    assert h1.shape == (3, m1.shape[1], text_encoder.config.hidden_size)
    assert (m3.sum(1) >= 1).all() and (m3[1:].sum(1) < m1[1:].sum(1)).all()
    assert torch.equal(h3[1], h3[2]) and torch.equal(h3[0], h1[0])
    # the memo of unpadded states equals encoding each prompt alone (padding only via the mask)
    ids = tokenizer(["add a hat"], return_tensors="pt").input_ids
    with torch.no_grad():
        alone = text_encoder(ids)[0][0]
    n = int(m1[1].sum())
    assert n == ids.shape[1] and torch.allclose(h1[1, :n], alone, atol=1e-5)
    assert tokenizer.unk_token_id in tokenizer("a zebra").input_ids  # out of vocabulary -> unk


# ----------------------------------------------------------------------------- the judge

def test_tiny_judge_answers_differentiably(judge):
    assert judge.patch == 14 and judge.merge == 2 and judge.tokens_per_image == 4
    ref = torch.rand(2, 3, 512, 512) * 2 - 1
    cand = (torch.rand(2, 3, 512, 512) * 2 - 1).requires_grad_()
    with torch.no_grad():
        ref_feats = judge.image_features(ref)
    cand_feats = judge.image_features(cand)
    assert cand_feats.shape == (2, 4, judge.vlm.config.text_config.hidden_size)
    q = V.EDIT_Q.format(instruction="make the red circle blue")
    ids = judge.tokenizer(judge.prompt(q, 2)).input_ids
    assert ids.count(judge.vlm.config.image_token_id) == 8
    d, full = judge.answer_logits([q, q], [ref_feats, cand_feats])
    assert d.shape == (2,) and full.shape == (2, judge.vlm.config.text_config.vocab_size)
    assert torch.allclose(d, full[:, judge.yes_id] - full[:, judge.no_id])
    d.sum().backward()  # d(l_yes - l_no) / d(pixels)
    assert torch.isfinite(cand.grad).all() and cand.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in judge.vlm.parameters())  # frozen


# ----------------------------------------------------------------------------- offline errors

def test_missing_weights_offline_is_one_line_saying_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for load, key in ((real.load_text_to_image, "t2i"), (real.load_vlm, "vlm")):
        with pytest.raises(SystemExit) as e:
            load("nobody/not-a-model")
        msg = str(e.value.code)
        assert msg.startswith("error: ") and "\n" not in msg
        assert "'nobody/not-a-model'" in msg and "`hf download nobody/not-a-model`" in msg
        assert f"--{key}=PATH" in msg
        missing = str(tmp_path / "no_such_model")
        with pytest.raises(SystemExit) as e:
            load(missing, key="prior")
        msg = str(e.value.code)
        assert "\n" not in msg and repr(missing) in msg and "no such folder" in msg
        assert "--prior=PATH" in msg


def test_the_real_loaders_read_a_saved_folder(t2i, judge, tmp_path):
    """The non-tiny branch, offline, on the twins saved in the layout of the hub repos."""
    for sub, m in zip(("transformer", "vae", "text_encoder", "tokenizer"), t2i):
        m.save_pretrained(tmp_path / "sana" / sub)
    loaded = real.load_text_to_image(str(tmp_path / "sana"))
    for a, b in zip(t2i[:3], loaded[:3]):
        assert type(a) is type(b) and all(torch.equal(p, q) for p, q in
                                          zip(a.state_dict().values(), b.state_dict().values()))
    assert loaded[3]("add a hat").input_ids == t2i[3]("add a hat").input_ids

    tok = V.judge_tokenizer()
    judge.vlm.save_pretrained(tmp_path / "vlm")
    tok.save_pretrained(tmp_path / "vlm")
    with pytest.raises(SystemExit, match="'Yes' is not one token"):  # real Qwen: "Yes", "No"
        real.load_vlm(str(tmp_path / "vlm"))
    tok.add_tokens(["Yes", "No"])  # (ids past the tiny model's vocabulary: loading only)
    tok.save_pretrained(tmp_path / "vlm")
    real_judge = real.load_vlm(str(tmp_path / "vlm"), image_size=56)
    assert real_judge.tokens_per_image == 4 and real_judge.tokenizer.padding_side == "right"
    assert real_judge.yes_id == tok.convert_tokens_to_ids("Yes")
    assert not any(p.requires_grad for p in real_judge.vlm.parameters())


# ----------------------------------------------------------------------------- data

def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_read_jsonl(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "sub" / "b.jpg")
    row = ('{"image": "%s", "instruction": "add a hat", "edited_caption": "a cat in a hat", '
           '"type": "add"}')
    rows = real.read_jsonl(_write(tmp_path / "good.jsonl", [
        row % "a.png", "", "   ", row % (tmp_path / "sub" / "b.jpg")]))
    assert [r["image"] for r in rows] == [str(tmp_path / "a.png"), str(tmp_path / "sub" / "b.jpg")]
    assert rows[0]["instruction"] == "add a hat" and rows[1]["type"] == "add"
    ok = row.replace('"add"}', '"add", "caption": "a cat"}') % "a.png"
    assert real.read_jsonl(_write(tmp_path / "cap.jsonl", [ok]))[0]["caption"] == "a cat"

    bad = {"bad_json": ('{"image": "a.png", ', "invalid JSON"),
           "missing": ('{"image": "a.png", "instruction": "x", "type": "add"}',
                       "'edited_caption' is missing"),
           "empty": (row.replace("add a hat", "") % "a.png", "'instruction' is empty"),
           "not_str": (row.replace('"add"}', '3}') % "a.png", "'type' is not a string"),
           "no_image": (row % "nope.png", "not found"),
           "bad_caption": (row.replace('"add"}', '"add", "caption": 7}') % "a.png",
                           "'caption' is not a string"),
           "not_object": ("[1, 2]", "expected a JSON object")}
    for name, (line, problem) in bad.items():
        path = _write(tmp_path / f"{name}.jsonl", [row % "a.png", "", line])
        with pytest.raises(ValueError, match=f"{name}.jsonl:3: .*{problem}"):
            real.read_jsonl(path)
    with pytest.raises(ValueError, match="no such file"):
        real.read_jsonl(str(tmp_path / "absent.jsonl"))
    # other JSONLs (sample.py's inputs): their own required and optional fields
    only = _write(tmp_path / "inputs.jsonl", ['{"image": "a.png"}'])
    assert real.read_jsonl(only, fields=("image",), optional=("instruction",))[0]["image"] == \
        str(tmp_path / "a.png")
    empty = _write(tmp_path / "inputs2.jsonl", ['{"image": "a.png", "instruction": " "}'])
    with pytest.raises(ValueError, match="inputs2.jsonl:1: field 'instruction' is empty"):
        real.read_jsonl(empty, fields=("image",), optional=("instruction",))


def test_load_image_modes_and_center_crop(tmp_path):
    R = 32
    cases = {  # file -> expected (approximately) constant value of the result, or None
        "rgba.png": (Image.new("RGBA", (50, 60), (255, 0, 0, 0)), 1.0),  # transparent -> white
        "la.png": (Image.new("LA", (50, 60), (0, 0)), 1.0),
        "gray.png": (Image.new("L", (40, 40), 0), -1.0),
        "gray16.png": (Image.fromarray(np.full((40, 40), 65535, np.uint16)), 1.0),
        "cmyk.jpg": (Image.new("CMYK", (40, 40), (0, 0, 0, 0)), None),
    }
    pal = Image.new("P", (40, 40), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.info["transparency"] = 0  # palette index 0 transparent -> white
    cases["palette.png"] = (pal, 1.0)
    for name, (img, value) in cases.items():
        img.save(tmp_path / name)
        x = real.load_image(str(tmp_path / name), R)
        assert x.shape == (3, R, R) and x.dtype == torch.float32, name
        assert x.min() >= -1 and x.max() <= 1, name
        if value is not None:
            assert torch.allclose(x, torch.full_like(x, value), atol=0.01), name
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")  # really 16-bit on disk

    # 100x40: red in the middle 60 columns, blue outside -> the short side becomes R and the
    # center crop keeps only red (squashing the whole width in would keep the blue edges)
    a = np.zeros((40, 100, 3), np.uint8)
    a[:, :, 2] = 255
    a[:, 20:80] = (255, 0, 0)
    Image.fromarray(a).save(tmp_path / "wide.png")
    x = real.load_image(str(tmp_path / "wide.png"), R)
    assert x.shape == (3, R, R)
    assert (x[0] > 0.95).all() and (x[2] < -0.95).all()

    png = (tmp_path / "wide.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "text.png").write_text("not an image")
    for name in ("truncated.png", "text.png"):
        with pytest.raises(ValueError, match=name):
            real.load_image(str(tmp_path / name), R)


# ----------------------------------------------------------------------------- train.py, real presets

HERE = os.path.dirname(os.path.abspath(__file__))


def _train(*args):
    import subprocess
    import sys
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "train.py", "--threads=1", *args], cwd=HERE, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("preset,extra", [("base", []), ("large", ["--lora_rank=4"])])
def test_real_preset_runs_one_full_step_offline(preset, extra, tmp_path):
    """Generator, fake score, VLM, VAE and text encoder: one warm-up and one NP-Edit step of the
    tiny twins; the preview grid holds 8 inputs and 8 edits at the preset's 512 px."""
    r = _train("--config", preset, "--tiny=True", "--warmup_steps=1", "--max_steps=1",
               f"--out_dir={tmp_path}", *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "step 1/1 | vlm" in r.stdout and "dmd" in r.stdout, r.stdout
    grid = Image.open(tmp_path / "grid_000001.png")
    assert grid.size == (8 * (512 + 2) + 2, 2 * (512 + 2) + 2)
    assert (tmp_path / "ckpt" / "model.safetensors").exists()


def test_real_preset_reads_jsonl_and_names_the_bad_line(tmp_path):
    Image.new("RGB", (300, 200), (200, 30, 30)).save(tmp_path / "a.png")
    good = {"image": "a.png", "instruction": "make it blue", "edited_caption": "a blue square",
            "type": "color"}
    import json
    (tmp_path / "edits.jsonl").write_text(json.dumps(good) + "\n")
    r = _train("--config", "base", "--tiny=True", "--warmup_steps=1", "--max_steps=1",
               f"--data={tmp_path / 'edits.jsonl'}", f"--out_dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr[-3000:]
    (tmp_path / "bad.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(
        {**good, "instruction": ""}) + "\n")
    r = _train("--config", "base", "--tiny=True", f"--data={tmp_path / 'bad.jsonl'}",
               f"--out_dir={tmp_path / 'run2'}")
    assert r.returncode != 0 and "bad.jsonl:2" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_real_preset_without_weights_is_a_one_line_error(tmp_path):
    r = _train("--config", "base", "--prior=nobody/not-a-model", f"--out_dir={tmp_path}")
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "nobody/not-a-model" in line[0] and "hf download" in line[0], r.stderr


def test_lora_trains_adapters_and_the_patch_embedding_only():
    import train
    _, cfg = train.parse_args(["--config", "base", "--tiny=True", "--lora_rank=4"])
    S = train.load_models(cfg, "cpu")
    for m in (S.generator.transformer, S.fake_score):
        names = [n for n, p in m.named_parameters() if p.requires_grad]
        assert names and all("lora_" in n or n.startswith("patch_embed") for n in names), names
        assert any("lora_" in n for n in names)
    assert not any(p.requires_grad for p in S.real_score.parameters())


def test_random_weights_build_the_published_sizes():
    """--random_weights=True (bench.py's full-size timing) builds each model at its published
    parameter count: SANA 0.59B / 1.60B, DC-AE 0.31B, Gemma-2-2B 2.61B, Qwen2.5-VL 3.75B / 8.29B
    (the last three counted here without the embedding rows of their real vocabularies)."""
    n = lambda m: sum(p.numel() for p in m.parameters()) / 1e9  # noqa: E731
    with torch.device("meta"):  # shapes only, nothing allocated
        for path, size in (("Efficient-Large-Model/Sana_600M_512px_diffusers", 0.592),
                           ("Efficient-Large-Model/Sana_1600M_512px_diffusers", 1.604)):
            transformer, vae, text_encoder, _ = real.published_text_to_image(path)
            assert n(transformer) == pytest.approx(size, abs=0.002)
        assert n(vae) == pytest.approx(0.312, abs=0.005)
        assert n(text_encoder) + 256_000 * 2304 / 1e9 == pytest.approx(2.614, abs=0.01)
        for path, size, vocab in (("Qwen/Qwen2.5-VL-3B-Instruct", 3.755, 151_936 * 2048),
                                  ("Qwen/Qwen2.5-VL-7B-Instruct", 8.292, 2 * 152_064 * 3584)):
            vlm = real.load_vlm(path, random_weights=True).vlm
            assert n(vlm) + vocab / 1e9 == pytest.approx(size, abs=0.01)
    with pytest.raises(SystemExit, match="names none of them"):
        real.published_text_to_image("someone/Sana_900M_512px")


# ----------------------------------------------------------------------------- inference

def test_a_lora_runs_editor_loads_merged_and_unchanged():
    """load_real_editor rebuilds a tiny run's frozen twins from its seed (the very weights it
    trained with) and merges its LoRA adapters into the transformer without changing a velocity."""
    import dataclasses

    import model as M
    from config import Config
    cfg = Config(kind="real", prior="unused", tiny=True, resolution=64, seed=3, lora_rank=4)
    torch.manual_seed(cfg.seed)  # as train.py does right before building the models
    transformer, vae, text_encoder, tok = real.load_text_to_image("unused", True, 64)
    cache = real.TextCache(text_encoder, tok)
    gen = M.Generator.from_prior(transformer, None, tok, text_cache=cache)
    M.add_lora(gen.transformer, cfg.lora_rank)
    with torch.no_grad():  # trained adapters: B != 0 (at init B = 0 and merging is trivial)
        for n, p in gen.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    x, ref, t = torch.randn(2, 32, 2, 2), torch.randn(2, 32, 2, 2), torch.tensor([0.9, 0.4])
    text, mask = gen.condition(["make the cat a dog", "add a hat"])
    with torch.no_grad():
        v_lora = gen(x, t, ref, text, mask)
        gen.transformer.disable_adapters()
        v_base = gen(x, t, ref, text, mask)
        gen.transformer.enable_adapters()
    merged, vae2 = load_real_editor(cfg, ema=gen.state_dict())
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        v = merged(x, t, ref, *merged.condition(["make the cat a dog", "add a hat"]))
    assert torch.allclose(v, v_lora, atol=1e-4) and not torch.allclose(v, v_base, atol=1e-2)
    for a, b in ((vae, vae2), (text_encoder, merged.text_cache.text_encoder)):
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                      b.state_dict().values()))
    assert not any(p.requires_grad for p in merged.parameters())
    with pytest.raises(RuntimeError):  # weights of another model: the caller's one-line error
        load_real_editor(dataclasses.replace(cfg, lora_rank=0), ema=gen.state_dict())


def test_open_rgb_and_square_keep_what_the_editor_sees(tmp_path):
    """square is load_image's crop; open_rgb keeps PIL's error as the cause (sample.py names it)."""
    a = np.zeros((40, 100, 3), np.uint8)
    a[:, 30:70] = 255  # a white band in the middle 40 columns: the center square holds it
    Image.fromarray(a).save(tmp_path / "wide.png")
    img = real.open_rgb(str(tmp_path / "wide.png"))
    assert img.size == (100, 40) and img.mode == "RGB"
    sq = np.asarray(real.square(img, 40))
    assert sq.shape == (40, 40, 3) and sq.min() == 255
    x = real.load_image(str(tmp_path / "wide.png"), 40)
    assert torch.equal(x, torch.from_numpy(sq.copy()).permute(2, 0, 1).float() / 127.5 - 1)
    (tmp_path / "text.png").write_text("not an image")
    from PIL import UnidentifiedImageError
    with pytest.raises(ValueError) as e:
        real.open_rgb(str(tmp_path / "text.png"))
    assert isinstance(e.value.__cause__, UnidentifiedImageError)
