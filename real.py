"""What the real presets need and the small world does not: real models, real images, real data.

The real presets edit photos with a diffusers SANA text-to-image model (SanaTransformer2DModel on
the 32x-compressed latents of its AutoencoderDC, conditioned on a Gemma2Model text encoder) as
the prior, and a transformers Qwen2.5-VL (Qwen2_5_VLForConditionalGeneration) as the judge. Here:
  load_text_to_image, load_vlm   the models, by hub id or local folder;
  TextCache                      the frozen text encoder with a per-prompt memo;
  read_jsonl, load_image         the training data: images plus instruction and edited caption;
  vae_encode, vae_decode         pixels <-> latents (decode keeps the graph: L_vlm reads pixels);
  training_models                the real presets' models for train.py.

Every model also has a tiny twin (tiny=True): the SAME class built from a small config with
random weights, nothing downloaded, so the whole real code path runs and is tested
(test_real.py) on a CPU in seconds; the twins' outputs mean nothing, their shapes, masks and
gradients are the real ones'. Offline, a model not downloaded yet is a one-line error.
"""
import json
import os
from types import SimpleNamespace

import numpy as np
import torch
from diffusers import AutoencoderDC, SanaTransformer2DModel
from PIL import Image, ImageOps
from transformers import (AutoProcessor, AutoTokenizer, Gemma2Config, Gemma2Model,
                          Qwen2_5_VLForConditionalGeneration)

import model as M
import toytext
import vlm_reward

# words the tiny text encoder knows besides the small world's (any other word maps to [UNK])
TINY_WORDS = ("photo of with in front behind her his their man woman dog cat car tree house sky "
              "hat sun replace sunset snow style painting add remove").split()


def quiet():
    """Silence the per-load progress bars of transformers and diffusers ("Loading weights"),
    which scripts that only load models print on stderr, and a deprecation warning that
    diffusers' loading raises inside huggingface_hub; other warnings and errors still show."""
    import warnings

    import diffusers
    import transformers
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")


def _fail(path, key, err):
    """Loading failed (not cached and offline, a wrong id or folder): one line saying what to do."""
    path, first = str(path), (str(err).strip().splitlines() or [""])[0][:300]
    reason = f"{type(err).__name__}: {first}"
    if path.startswith((os.sep, ".", "~")) or os.path.exists(path):  # meant as a local folder
        if not os.path.isdir(os.path.expanduser(path)):
            reason = "no such folder"
        raise SystemExit(f"error: cannot load {path!r} ({reason}); pass a hub id or a model "
                         f"folder with --{key}=PATH")
    raise SystemExit(f"error: cannot load {path!r} ({reason}); download it first with "
                     f"`hf download {path}` or pass a local folder with --{key}=PATH")


# ----------------------------------------------------------------------------- text-to-image

def tiny_text_to_image(resolution=512):
    """Random SANA-like twins: DC-AE with the real 32x compression and 32 latent channels
    (thin: a 512 px encode or decode takes ~0.2 s on 2 CPU cores), a 2-layer Gemma2 of width
    64, a word-level tokenizer, and a 2-layer Sana transformer on the latents (patch 1)."""
    # the real DC-AE's block types, norms and activations, 8-32 channels, one layer per stage;
    # 0 layers in stage 0 makes conv_in downsample, so no block runs at full resolution
    stages = ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3
    channels, layers = (8, 8, 16, 16, 32, 32), (0, 1, 1, 1, 1, 1)
    vae = AutoencoderDC(
        in_channels=3, latent_channels=32, attention_head_dim=8, encoder_block_types=stages,
        decoder_block_types=stages, encoder_block_out_channels=channels,
        decoder_block_out_channels=channels, encoder_layers_per_block=layers,
        decoder_layers_per_block=layers, upsample_block_type="interpolate",
        decoder_norm_types=("batch_norm",) * 3 + ("rms_norm",) * 3,
        decoder_act_fns=("relu",) * 3 + ("silu",) * 3, scaling_factor=0.41407)  # the real one's
    tokenizer = toytext.build_tokenizer(extra_words=TINY_WORDS)  # [CLS] plays Gemma's <bos>
    tokenizer.model_max_length = 300
    text_encoder = Gemma2Model(Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
        max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id))
    transformer = SanaTransformer2DModel(
        in_channels=32, out_channels=32, num_attention_heads=2, attention_head_dim=32,
        num_layers=2, num_cross_attention_heads=2, cross_attention_head_dim=32,
        cross_attention_dim=64, caption_channels=64, mlp_ratio=2.5, patch_size=1,
        sample_size=resolution // vae.spatial_compression_ratio)
    return transformer, vae.eval(), text_encoder.eval(), tokenizer


# The published architectures (each model's config.json, copied by hand), for
# random_weights=True: full-size timing and memory (bench.py on a GPU) with nothing downloaded.
# Keyed by the size in the hub id; tokenizers are the tiny twins' (prompt lengths differ).
SANA_SIZES = {"600M": dict(num_attention_heads=36, attention_head_dim=32, num_layers=28,
                           num_cross_attention_heads=16, cross_attention_head_dim=72),
              "1600M": dict(num_attention_heads=70, attention_head_dim=32, num_layers=20,
                            num_cross_attention_heads=20, cross_attention_head_dim=112)}
QWEN_SIZES = {"3B": dict(text_width=2048, text_layers=36, heads=16, kv_heads=2,
                         intermediate=11008),
              "7B": dict(text_width=3584, text_layers=28, heads=28, kv_heads=4,
                         intermediate=18944)}


def published_size(path, sizes):
    """The entry of sizes named in path ("..._600M_...", "...-3B-..."), else a one-line error."""
    for k, v in sizes.items():
        if f"_{k}_" in path or f"-{k}-" in path:
            return v
    raise SystemExit(f"error: --random_weights knows the sizes {', '.join(sizes)}; {path!r} "
                     f"names none of them")


def published_text_to_image(path, resolution=512):
    """Random weights in SANA's published shapes: the f32c32 DC-AE (diffusers' AutoencoderDC
    defaults plus SANA 1.0's decoder), Gemma2-2B, and the transformer SANA_SIZES names."""
    vae = AutoencoderDC(upsample_block_type="interpolate", scaling_factor=0.41407,
                        decoder_norm_types=("batch_norm",) * 3 + ("rms_norm",) * 3,
                        decoder_act_fns=("relu",) * 3 + ("silu",) * 3)
    tokenizer = toytext.build_tokenizer(extra_words=TINY_WORDS)
    tokenizer.model_max_length = 300
    text_encoder = Gemma2Model(Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
        num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id))
    size = published_size(path, SANA_SIZES)
    width = size["num_attention_heads"] * size["attention_head_dim"]
    transformer = SanaTransformer2DModel(
        in_channels=32, out_channels=32, cross_attention_dim=width, caption_channels=2304,
        mlp_ratio=2.5, patch_size=1, sample_size=resolution // 32, **size)
    return transformer, vae.eval(), text_encoder.eval(), tokenizer


def load_text_to_image(path, tiny=False, resolution=512, dtype=torch.float32, key="t2i",
                       random_weights=False):
    """-> (transformer, vae, text_encoder, tokenizer) of a diffusers SANA pipeline: a hub id or a
    local folder with transformer/, vae/, text_encoder/, tokenizer/ (e.g.
    "Efficient-Large-Model/Sana_600M_512px_diffusers"); tiny=True: random twins, path unused."""
    if tiny or random_weights:
        models = tiny_text_to_image(resolution) if tiny else \
            published_text_to_image(path, resolution)
        if dtype != torch.float32:  # (diffusers warns on any .to(dtype), even a no-op)
            models = [m.to(dtype) for m in models[:3]] + [models[3]]
        return tuple(models)
    try:
        transformer = SanaTransformer2DModel.from_pretrained(path, subfolder="transformer",
                                                             dtype=dtype)
        vae = AutoencoderDC.from_pretrained(path, subfolder="vae", dtype=dtype)
        text_encoder = Gemma2Model.from_pretrained(path, subfolder="text_encoder", dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer")
    except (OSError, ValueError) as e:  # not cached offline, no such folder, invalid id
        _fail(path, key, e)
    tokenizer.padding_side = "right"  # as the SANA pipeline sets it
    return transformer, vae.eval(), text_encoder.eval(), tokenizer


def vae_encode(vae, images):
    """(B, 3, H, W) in [-1, 1] -> latents (B, C, H/32, W/32), scaled to ~unit variance."""
    with torch.no_grad():
        return vae.encode(images.to(vae.dtype)).latent * vae.config.scaling_factor


def vae_decode(vae, latents):
    """Latents -> images in [-1, 1] (in vae.dtype), WITH grad: L_vlm backpropagates through it."""
    return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample


def training_models(cfg, device, frozen):
    """train.load_models for the real presets: the text-to-image model (by id or folder, or its
    tiny twin, or random weights at its published size), the generator built from it, the judge,
    the frozen text encoder's cache and the VAE. -> (transformer, generator, judge,
    caption_features, to_latent, to_pixels); frozen modules in `frozen` (bf16 on CUDA)."""
    with torch.device(device if cfg.random_weights else "cpu"):  # (random init: on device)
        transformer, vae, text_encoder, tok = load_text_to_image(
            cfg.prior, cfg.tiny, cfg.resolution, key="prior", random_weights=cfg.random_weights)
        judge = load_vlm(cfg.judge, cfg.tiny, cfg.judge_size, key="judge",
                         random_weights=cfg.random_weights)
    cache = TextCache(text_encoder.to(device, frozen).eval().requires_grad_(False), tok)
    generator = M.Generator.from_prior(transformer, None, tok, text_cache=cache,
                                       ref_init=cfg.ref_init)
    vae = vae.to(device, frozen).eval().requires_grad_(False)
    return (transformer, generator, judge, cache, lambda im: vae_encode(vae, im),
            lambda x: vae_decode(vae, x))


class TextCache:
    """The frozen text encoder and its tokenizer, with a memo: prompt -> (hidden (L, D), mask (L,))
    stored on `device` (default CPU), so each caption or instruction is encoded once per run.

    Encodes as SANA's pipeline does (lower-cased and stripped, truncated at 300 tokens, right
    padding, text_encoder(input_ids, attention_mask)[0]) but WITHOUT its 'complex human
    instruction' prefix (a long system prompt SANA prepends to user prompts, not negatives).
    The memo keeps each prompt's unpadded states: the encoder sees padding only through its
    mask, so this is exact. The memo is unbounded: one entry per distinct prompt.
    __call__(texts, drop=None) -> (hidden (B, L, D), mask (B, L)), right-padded to the longest
    in the batch, on the encoder's device. drop (B,) bool: those rows get the empty prompt ""
    (the unconditional branch of CFG), which keeps its first token ([CLS] / <bos>) unmasked."""

    def __init__(self, text_encoder, tokenizer, max_length=300, device="cpu"):
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.tokenizer, self.max_length, self.device = tokenizer, max_length, device
        self.memo = {}

    @torch.no_grad()
    def encode(self, texts):
        """Encode the prompts not seen yet, in one batch, into the memo."""
        new = [t for t in dict.fromkeys(texts) if t not in self.memo]
        if not new:
            return
        dev = next(self.text_encoder.parameters()).device
        tok = self.tokenizer(new, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(dev)
        mask = tok.attention_mask
        mask[:, 0] = 1  # an empty prompt that tokenizes to nothing still attends to one token
        hidden = self.text_encoder(tok.input_ids, attention_mask=mask)[0]  # (N, L, D)
        for t, h, m in zip(new, hidden, mask):
            n = int(m.sum())
            self.memo[t] = (h[:n].to(self.device), m[:n].to(self.device))

    def __call__(self, texts, drop=None):
        texts = [t.lower().strip() for t in texts]  # as SANA's pipeline (clean_caption=False)
        if drop is not None:
            texts = ["" if d else t for t, d in zip(texts, drop.tolist())]
        self.encode(texts)
        dev = next(self.text_encoder.parameters()).device
        hidden, mask = zip(*(self.memo[t] for t in texts))  # right-pad with zeros:
        pad = torch.nn.utils.rnn.pad_sequence
        return pad(hidden, batch_first=True).to(dev), pad(mask, batch_first=True).to(dev)


# ----------------------------------------------------------------------------- the judge

def load_vlm(path, tiny=False, image_size=448, dtype=torch.float32, key="vlm",
             random_weights=False):
    """-> a frozen vlm_reward.Judge around a Qwen2.5-VL (e.g. "Qwen/Qwen2.5-VL-7B-Instruct"),
    asking at image_size px (448 = 16x16 merged visual tokens); its answers are the single
    tokens "Yes"/"No" of Qwen's tokenizer. tiny=True: a random Qwen2.5-VL with the real patch 14
    and merge 2, asked at 56 px (4 merged tokens; image_size is ignored), with the small
    world's judge tokenizer (which has Qwen's chat tokens; its answers are "yes"/"no")."""
    if tiny:
        tokenizer = vlm_reward.judge_tokenizer()
        cfg = vlm_reward.tiny_judge_config(tokenizer, vision_width=32, text_width=64,
                                           text_layers=2, patch_size=14, window_size=112)
        vlm = Qwen2_5_VLForConditionalGeneration(cfg).to(dtype)
        return vlm_reward.Judge(vlm.eval().requires_grad_(False), tokenizer, image_size=56)
    if random_weights:  # Qwen2.5-VL's published vision tower and the text size QWEN_SIZES names
        tokenizer = vlm_reward.judge_tokenizer()
        cfg = vlm_reward.tiny_judge_config(
            tokenizer, vision_width=1280, patch_size=14, window_size=112, vision_depth=32,
            vision_heads=16, vision_intermediate=3420, fullatt=(7, 15, 23, 31),
            rope_theta=1e6, **published_size(path, QWEN_SIZES))
        vlm = Qwen2_5_VLForConditionalGeneration(cfg).to(dtype)
        return vlm_reward.Judge(vlm.eval().requires_grad_(False), tokenizer,
                                image_size=image_size)
    try:
        vlm = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.chat_template is None:  # older snapshots keep it in chat_template.json
            tokenizer.chat_template = AutoProcessor.from_pretrained(path).chat_template
    except (OSError, ValueError) as e:
        _fail(path, key, e)
    tokenizer.padding_side = "right"  # Judge reads the answer at the last unpadded position
    for word in ("Yes", "No"):
        if tokenizer.convert_tokens_to_ids(word) in (None, tokenizer.unk_token_id):
            raise SystemExit(f"error: {path!r}: {word!r} is not one token of its tokenizer")
    return vlm_reward.Judge(vlm.eval().requires_grad_(False), tokenizer, image_size=image_size,
                            yes="Yes", no="No")


# ----------------------------------------------------------------------------- data

FIELDS = ("image", "instruction", "edited_caption", "type")
OPTIONAL = ("caption", "object")  # checked like FIELDS when present


def read_jsonl(path, fields=FIELDS, optional=OPTIONAL):
    """Real-preset data: one JSON object per line, {"image": path, "instruction": str,
    "edited_caption": str, "type": str}, optionally "caption" (of the input image: the identity
    warm-up's prompt, else the instruction) and "object" (a removal's object, else read off the
    instruction); an image path is relative to the JSONL's folder.
    -> a list of dicts with the image path resolved. Blank lines are skipped; anything else
    wrong raises ValueError naming file:line and the problem. fields / optional: the string
    fields required / checked when present (sample.py and eval.py read other JSONLs with it)."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    root, rows = os.path.dirname(os.path.abspath(path)), []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            for k in tuple(fields) + tuple(k for k in optional if k in row):
                v = row.get(k)
                problem = ("missing" if k not in row else f"not a string ({type(v).__name__})"
                           if not isinstance(v, str) else "empty" if not v.strip() else None)
                if problem:
                    raise ValueError(f"{path}:{n}: field {k!r} is {problem}")
            image = os.path.join(root, os.path.expanduser(row["image"]))
            if not os.path.isfile(image):
                raise ValueError(f"{path}:{n}: image {row['image']!r} not found ({image})")
            rows.append({**row, "image": image})
    return rows


def open_rgb(path):
    """Any image PIL reads -> an 8-bit RGB PIL image: EXIF rotation applied, transparency
    composited on white, grayscale, palette and 16-bit made RGB. An unreadable, truncated or
    too large (PIL's decompression-bomb limit) file raises ValueError; its cause is PIL's error."""
    try:
        with Image.open(path) as f:
            f.load()  # decode now, so a truncated file fails here
            img = ImageOps.exif_transpose(f)
        if img.mode.startswith("I"):  # 16-bit grayscale ("I;16", or "I" from older Pillow)
            a = np.asarray(img, dtype=np.float32) / 257
            img = Image.fromarray(a.clip(0, 255).round().astype(np.uint8), "L")
        if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
        return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e


def square(img, resolution):
    """A PIL image resized (bicubic) so its SHORT side is R, then center-cropped to R x R."""
    w, h = img.size
    s = resolution / min(w, h)
    nw, nh = max(resolution, round(w * s)), max(resolution, round(h * s))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def jsonl_batches(cfg, rng, device):
    """train.make_batches for --data: -> next_batch(n), n records drawn with rng, their images
    loaded at cfg.resolution; the same fields as the small world's batches (target None: no
    pairs). A bad file or image is a one-line SystemExit."""
    try:
        records = read_jsonl(cfg.data)
    except ValueError as e:
        raise SystemExit(f"error: {e}")

    def next_batch(n):
        recs = [rng.choice(records) for _ in range(n)]
        try:
            ref = torch.stack([load_image(r["image"], cfg.resolution) for r in recs])
        except ValueError as e:
            raise SystemExit(f"error: {e}")
        return SimpleNamespace(
            instructions=[r["instruction"] for r in recs], types=[r["type"] for r in recs],
            objects=[r.get("object") for r in recs], target=None,
            edited_captions=[r["edited_caption"] for r in recs],
            captions=[r.get("caption") or r["instruction"] for r in recs], reference=ref.to(device))
    return next_batch


def load_image(path, resolution):
    """-> (3, R, R) float in [-1, 1]: open_rgb, then square. ValueError if unreadable."""
    x = torch.from_numpy(np.asarray(square(open_rgb(path), resolution), dtype=np.uint8).copy())
    return x.permute(2, 0, 1).float() / 127.5 - 1
