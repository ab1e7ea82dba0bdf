"""The text-to-image prior and the generator G_theta built from it, with its few-step sampler and
its training-time unroll (docs/method.md, "The generator" and "The unroll").

Rectified flow (docs/method.md, "Notation"): x_t = (1 - t) x0 + t eps, t in [0, 1] (t = 1 is pure
noise); the network predicts the velocity v = eps - x0, so x0 = x_t - t v.

The prior is a diffusers SanaTransformer2DModel (the class of the real SANA presets) plus a text
encoder. In the small world it is tiny and pixel-space (32x32x3, no VAE, patch 4 -> 64 tokens),
with three changes that docs/log.md ("The prior") found necessary for objects to land in the
right cell:
  - softmax self-attention (diffusers' AttnProcessor2_0) instead of Sana's linear attention,
    cheap at 64 tokens;
  - sin-cos absolute position embeddings (interpolation_scale=1);
  - a bidirectional text encoder (a 2-layer BertModel) instead of SANA's causal Gemma2, reading
    captions (toytext.caption) and, while it learns, structured prompts (toyworld.prompt).
"""
import torch
import torch.nn.functional as F
from diffusers import SanaTransformer2DModel
from diffusers.models.attention_processor import AttnProcessor2_0
from transformers import AutoTokenizer, BertConfig, BertModel

# ----------------------------------------------------------------------------- flow helpers


def add_noise(x0, eps, t):
    """x_t = (1 - t) x0 + t eps, t of shape (B,)."""
    t = t.view(-1, *([1] * (x0.ndim - 1)))
    return (1 - t) * x0 + t * eps


def x0_from_v(x_t, v, t):
    """x0 = x_t - t v (the explicit velocity -> x0 conversion DMD needs, method.md)."""
    return x_t - t.view(-1, *([1] * (x_t.ndim - 1))) * v


def logit_normal_t(n, rng=None, device="cpu"):
    """t = sigmoid(N(0, 1)): SD3's logit-normal training distribution, denser mid-way."""
    return torch.sigmoid(torch.randn(n, generator=rng, device=device))


# ----------------------------------------------------------------------------- the prior

def use_softmax_attention(transformer):
    """Swap Sana's linear self-attention for softmax attention (see module docstring)."""
    for block in transformer.transformer_blocks:
        block.attn1.set_processor(AttnProcessor2_0())
    return transformer


def tiny_prior(vocab_size, in_channels=3, width=128, layers=6, text_width=128, text_layers=2):
    """A randomly initialised small-world prior: (transformer, text_encoder)."""
    heads = width // 32
    transformer = SanaTransformer2DModel(
        in_channels=in_channels, out_channels=3, num_attention_heads=heads,
        attention_head_dim=32, num_layers=layers, num_cross_attention_heads=heads,
        cross_attention_head_dim=32, cross_attention_dim=width, caption_channels=text_width,
        mlp_ratio=2.5, sample_size=32, patch_size=4, interpolation_scale=1)
    text_encoder = BertModel(BertConfig(
        vocab_size=vocab_size, hidden_size=text_width, num_hidden_layers=text_layers,
        num_attention_heads=text_width // 32, intermediate_size=4 * text_width,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        add_pooling_layer=False)
    return use_softmax_attention(transformer), text_encoder


def load_prior(path):
    """Load a prior saved by save_prior: (transformer, text_encoder, tokenizer)."""
    transformer = SanaTransformer2DModel.from_pretrained(f"{path}/transformer")
    text_encoder = BertModel.from_pretrained(f"{path}/text_encoder", add_pooling_layer=False)
    tokenizer = AutoTokenizer.from_pretrained(f"{path}/tokenizer")
    return use_softmax_attention(transformer), text_encoder, tokenizer


def small_prior(path):
    """The small world's prior: a folder written by pretrain.py, or "random" (a tiny random
    one, for tests). -> (transformer, text_encoder, tokenizer)."""
    if path != "random":
        return load_prior(path)
    from toytext import build_tokenizer
    tok = build_tokenizer()
    return (*tiny_prior(len(tok), width=32, layers=1, text_width=32, text_layers=1), tok)


def save_prior(path, transformer, text_encoder, tokenizer):
    transformer.save_pretrained(f"{path}/transformer")
    text_encoder.save_pretrained(f"{path}/text_encoder")
    tokenizer.save_pretrained(f"{path}/tokenizer")


def encode_text(text_encoder, tokenizer, texts, drop=None):
    """texts -> (hidden states (B, L, D), attention mask (B, L)). Rows where drop is True become
    the empty condition (the [CLS] token alone), used for caption dropout and CFG."""
    device = next(text_encoder.parameters()).device
    tok = tokenizer(list(texts), padding=True, return_tensors="pt").to(device)
    ids, mask = tok.input_ids, tok.attention_mask
    if drop is not None:
        drop = drop.to(device)
        mask = torch.where(drop[:, None], torch.zeros_like(mask), mask)
        mask[:, 0] = 1  # keep [CLS], so no row is fully masked
    h = text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    return h, mask


def tokenize(tokenizer, texts, device):
    """texts -> (input ids, attention mask) on device."""
    tok = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
    return tok.input_ids.to(device), tok.attention_mask.to(device)


def velocity(transformer, x_t, t, text, mask):
    """v_hat = transformer(x_t, t, text); Sana takes the timestep on a 0-1000 scale."""
    return transformer(x_t, encoder_hidden_states=text, encoder_attention_mask=mask,
                       timestep=t * 1000, return_dict=False)[0]


def flow_matching_loss(transformer, x0, text, mask, rng=None):
    """Rectified-flow training loss: || v_hat(x_t, t) - (eps - x0) ||^2, t logit-normal."""
    eps = torch.randn(x0.shape, generator=rng, device=x0.device)
    t = logit_normal_t(x0.shape[0], rng, x0.device)
    return F.mse_loss(velocity(transformer, add_noise(x0, eps, t), t, text, mask), eps - x0)


@torch.no_grad()
def sample_prior(transformer, text_encoder, tokenizer, prompts, steps=10, cfg=3.0, seed=0):
    """Text-to-image with the prior: Euler from t=1 to t=0 with classifier-free guidance
    v = v_uncond + cfg (v_cond - v_uncond). Returns images (B, 3, 32, 32) in [-1, 1]."""
    device = next(transformer.parameters()).device
    n = len(prompts)
    text, mask = encode_text(text_encoder, tokenizer, list(prompts) * 2,
                             drop=torch.arange(2 * n) >= n)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g).to(device)
    ts = torch.linspace(1, 0, steps + 1)
    for i in range(steps):
        t = torch.full((2 * n,), float(ts[i]), device=device)
        v_c, v_u = velocity(transformer, torch.cat([x, x]), t, text, mask).chunk(2)
        x = x - (ts[i] - ts[i + 1]) * (v_u + cfg * (v_c - v_u))
    return x.clamp(-1, 1)


# ----------------------------------------------------------------------------- the generator

class Generator(torch.nn.Module):
    """G_theta, the editor: the prior's transformer, shown the reference image y, and its text
    encoder, reading the instruction c. Initialised from the prior; trained by NP-Edit.

    The reference is concatenated along *channels* (InstructPix2Pix style): the patch embedding
    gets extra input channels. The paper concatenates reference tokens along the sequence
    instead; Sana's Mix-FFN runs a 3x3 depthwise conv over the token grid, so a second image in
    the sequence would need its own grid, while channel concatenation keeps one grid and costs
    nothing extra. The reference is always given clean and detached.
    ref_init a: the reference channels start as a share a of the prior's patch-embedding
    weights and the noisy input's keep 1 - a, so at init G is the prior applied to
    (1 - a) x_t + a y. a = 0 (zero init) makes G exactly the prior; a > 0 puts the reference in
    the prior's own feature space, as the paper's sequence concatenation does, where the
    prior already matches image content to words ("the red circle"; docs/log.md, "Finding an
    object by its description")

    Text: the small world trains its tiny text encoder with the transformer (condition() gives
    token ids, encoded inside forward); real presets keep theirs frozen (text_cache, a
    real.TextCache, gives hidden states once per prompt)."""

    def __init__(self, transformer, text_encoder, tokenizer, text_cache=None):
        super().__init__()
        self.transformer, self.text_encoder, self.tokenizer = transformer, text_encoder, tokenizer
        self.text_cache = text_cache

    @classmethod
    def from_prior(cls, transformer, text_encoder, tokenizer, text_cache=None, ref_init=0.0):
        import copy
        cfg = dict(transformer.config)
        c = cfg["in_channels"]
        cfg["in_channels"], cfg["out_channels"] = 2 * c, cfg.get("out_channels") or c
        t = SanaTransformer2DModel.from_config(cfg)
        if t.dtype != transformer.dtype:
            t = t.to(transformer.dtype)
        sd = transformer.state_dict()
        w = sd["patch_embed.proj.weight"]  # (D, c, p, p) -> (D, 2c, p, p): x_t's, y's
        sd["patch_embed.proj.weight"] = torch.cat([(1 - ref_init) * w, ref_init * w], 1)
        t.load_state_dict(sd)
        t.set_attn_processor(transformer.attn_processors)  # softmax in the small world
        if text_cache is None:  # trained with the editor: its own copy, no dropout
            text_encoder = copy.deepcopy(text_encoder)
            for m in text_encoder.modules():  # the unroll's two passes must agree
                if isinstance(m, torch.nn.Dropout):
                    m.p = 0.0
        else:
            text_encoder = None  # frozen, lives in the cache
        return cls(t, text_encoder, tokenizer, text_cache)

    def condition(self, instructions):
        """-> (text, mask): token ids (small world) or frozen hidden states (real presets)."""
        if self.text_cache is not None:
            return self.text_cache(instructions)
        return tokenize(self.tokenizer, instructions, next(self.parameters()).device)

    def forward(self, x_t, t, reference, text, mask):
        """Velocity v_hat(x_t, t | y, c). Token ids are encoded here, inside forward, so one
        DDP-wrapped call covers the trainable text encoder too."""
        if not text.is_floating_point():
            text = self.text_encoder(input_ids=text, attention_mask=mask).last_hidden_state
        return velocity(self.transformer, torch.cat([x_t, reference.detach()], 1), t, text, mask)


def shifted(ts, shift):
    """SD3 time shift t' = s t / (1 + (s - 1) t); shift 6 maps [1, .75, .5, .25] to the paper's
    [1, .9474, .8571, .6667]."""
    ts = torch.as_tensor(ts, dtype=torch.float32)
    return shift * ts / (1 + (shift - 1) * ts)


def sample_edit(generator, reference, instructions, steps=(1.0, 0.75, 0.5, 0.25), shift=1.0,
                seed=0, clamp=True):
    """The few-step editor: at each t predict x0, then re-noise it with fresh noise to the next
    t (DDIM with eta = 1); no CFG. Returns edited images (B, C, H, W), clamped to [-1, 1] unless
    clamp=False (latents of the real presets)."""
    g = torch.Generator().manual_seed(seed)
    dev = reference.device
    ts = shifted(steps, shift).tolist()
    with torch.no_grad():
        ids, mask = generator.condition(instructions)
        x = torch.randn(reference.shape, generator=g).to(dev)
        for i, t in enumerate(ts):
            tt = torch.full((reference.shape[0],), t, device=dev)
            x0 = x0_from_v(x, generator(x, tt, reference, ids, mask), tt)
            if i + 1 < len(ts):
                x = add_noise(x0, torch.randn(x0.shape, generator=g).to(dev),
                              torch.full_like(tt, ts[i + 1]))
    return x0.clamp(-1, 1) if clamp else x0


def unroll(generator, reference, ids, mask, k, steps=(1.0, 0.75, 0.5, 0.25), shift=1.0, rng=None):
    """The training-time unroll (docs/method.md, "The unroll"), with gradients through every step:
      x0' = eps - G(eps, t=1)            one step from pure noise;
      if k > 1: x_tk = (1 - t_k) x0' + t_k eps',  x0 = x_tk - t_k G(x_tk, t_k).
    k = 1 is the single step t=1 -> 0. Returns x0 (B, 3, H, W)."""
    B, dev = reference.shape[0], reference.device
    ts = shifted(steps, shift).tolist()
    eps = torch.randn(reference.shape, generator=rng).to(dev)
    one = torch.ones(B, device=dev)
    x0 = eps - generator(eps, one, reference, ids, mask)
    if k > 1:
        tk = torch.full((B,), ts[k - 1], device=dev)
        x_tk = add_noise(x0, torch.randn(reference.shape, generator=rng).to(dev), tk)
        x0 = x0_from_v(x_tk, generator(x_tk, tk, reference, ids, mask), tk)
    return x0


def edit_flow_loss(generator, reference, target, ids, mask, steps=(1.0, 0.75, 0.5, 0.25),
                   shift=1.0, rng=None):
    """Flow matching of the editor towards a given target image, conditioned on (y, c):
    || G(x_t, t | y, c) - (eps - target) ||^2, x_t = (1 - t) target + t eps. t ~ U[0, 1], half of
    it on the few-step schedule's own t (t = 1 above all), which the sampler and the unroll visit
    and a logit-normal t would almost never draw. Two uses: the identity warm-up, whose target is
    the reference itself (identity_loss), and the SFT baseline on true pairs (baselines.py), the
    only place in the repo where a target image reaches the editor."""
    B = reference.shape[0]
    eps = torch.randn(reference.shape, generator=rng).to(reference.device)
    sched = shifted(steps, shift)[torch.randint(len(steps), (B,), generator=rng)]
    t = torch.where(torch.rand(B, generator=rng) < 0.5, sched,
                    torch.rand(B, generator=rng)).to(reference.device)
    v = generator(add_noise(target, eps, t), t, reference, ids, mask)
    return F.mse_loss(v, eps - target)


def identity_loss(generator, reference, ids, mask, shift=1.0, rng=None):
    """The warm-up ("learn to copy", docs/method.md "Warm-up"): edit_flow_loss whose target is the
    reference y itself, so G starts as an editor that returns its input."""
    return edit_flow_loss(generator, reference, reference, ids, mask, shift=shift, rng=rng)


def add_lora(transformer, rank):
    """LoRA (peft) on the attention and feed-forward projections of a Sana transformer (real
    presets, --lora_rank); the patch embedding, whose reference channels start at zero, stays
    fully trainable."""
    from peft import LoraConfig
    transformer.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                       target_modules=["to_q", "to_k", "to_v", "to_out.0",
                                                       "conv_inverted", "conv_point"]))
    transformer.patch_embed.requires_grad_(True)


def editor_fn(generator, device, shift):
    """-> edit(PIL references, instructions) -> uint8 images: the small world's editor as
    toyworld.evaluate calls it."""
    from toyworld import to_tensor, to_uint8

    def edit(refs, instructions):
        return list(to_uint8(sample_edit(generator, to_tensor(refs).to(device), instructions,
                                         shift=shift)))
    return edit
