"""Training configuration: one dataclass of defaults, named presets, `--key=value` overrides.

    python train.py --config small --max_steps=800 --w_vlm=0.05

Presets:
  small  the small world with the shipped prior and judge, 2 CPU cores (the defaults below);
  tiny   random tiny small-world models, seconds on a CPU (tests);
  base   SANA 600M 512 px + Qwen2.5-VL-3B (one 24-48 GB GPU);
  large  SANA 1.6B 512 px + Qwen2.5-VL-7B (80 GB, or several GPUs with FSDP).
Real presets take `--tiny=True` to swap every model for a tiny random one of the same class.
Every value is checked where it is parsed (RANGES): a bad one is a one-line error.
"""
import math
from dataclasses import dataclass, fields
from functools import lru_cache

METHODS = ("npedit", "sft", "grpo")  # NP-Edit, and the two baselines of baselines.py


@dataclass
class Config:
    """The defaults are the `small` preset; the real presets carry the values of the paper's
    reimplementation (docs/method.md, "Hyperparameters")."""
    kind: str = "small"                  # "small": the procedural world; "real": SANA + Qwen2.5-VL
    prior: str = "assets/small/prior"    # text-to-image model: folder, hub id, or "random" (tiny)
    judge: str = "assets/small/judge"    # VLM judge: folder, hub id, or "random" (tiny)
    tiny: bool = False                   # real presets: tiny random twins of every model
    random_weights: bool = False         # real presets: published sizes, random (bench.py)
    data: str = ""                       # real presets: JSONL of edits ("" = small-world scenes)
    resolution: int = 32                 # image side in pixels
    judge_size: int = 32                 # the side the judge sees (resized, differentiably)
    out_dir: str = ""                    # default out/<config>
    seed: int = 0
    method: str = "npedit"               # npedit | sft (true pairs) | grpo (Flow-GRPO reward)
    batch_size: int = 8
    ref_init: float = 0.5                # share of the prior's patch weights the reference starts
                                         # with (0: zero init; model.Generator)
    warmup_steps: int = 200              # identity warm-up ("learn to copy") steps
    warmup_lr: float = 1e-3
    warmup_prompt: str = "caption"       # warm-up prompt: "caption" of y (paper) | "instruction"
    max_steps: int = 4000                # generator steps after the warm-up
    lr: float = 5e-4                     # generator
    cosine: bool = True                  # decay the generator lr to 0 (cosine)
    decay_steps: int = 1600              # cosine: hold the lr, decay over the last N (0: all)
    fake_lr: float = 1e-3                # fake score
    beta1: float = 0.0                   # AdamW betas (0, 0.9), as the reimplementation
    beta2: float = 0.9
    n_aux: int = 1                       # N_aux: fake-score updates per generator step
    w_vlm: float = 0.2                   # weight of L_vlm at the start (the reimplementation: 0.02)
    vlm_anneal: float = 0.25             # w_vlm's factor at the last step, linear from 1 (1: off;
                                         # docs/log.md, "A 2-layer prior")
    w_dmd: float = 1.0                   # weight of L_dmd
    cfg: float = 3.0                     # real score CFG scale
    cfg_by_type: str = ""                # per edit type, e.g. "add=8,color=5" (others: cfg)
    type_mix: str = "add=2"              # small world: edit-type weights, e.g. "add=2" (others 1)
    vlm_by_type: str = "color=6,remove=2"  # L_vlm's weight per edit type (others 1)
    vlm_by_type_from: int = 1000         # the step from which vlm_by_type applies (before: 1)
    dmd_t_min: float = 0.02              # DMD's t ~ U[dmd_t_min, 0.98]
    p_nothing: float = 0.01              # "do nothing" samples with an MSE(x0, y) term
    max_k: int = 4                       # unroll: k ~ U{1..max_k} of the 4-step schedule
    shift: float = 1.0                   # time shift of the 4-step schedule
    vlm_temp_ramp: int = 0               # steps of the temperature ramp 0.1 -> 1 (0: off)
    full_vocab: bool = False             # ablation: full-vocabulary CE instead of yes/no BCE
    identity_question: bool = True       # ablation: drop the "same except" question
    group_size: int = 4                  # grpo: samples per (reference, instruction) group
    kl_coef: float = 0.01                # grpo: KL to the initial editor
    ema: float = 0.99
    grad_clip: float = 2.0
    skip_grad_norm: float = 300.0        # skip a step whose grad norm exceeds this
    lora_rank: int = 0                   # real presets: LoRA on generator and fake score (peft)
    compile: bool = True                 # torch.compile generator and fake score (CUDA only)
    grad_ckpt: bool = False              # gradient checkpointing in the transformers
    fsdp: bool = False                   # under torchrun: FSDP2 (fully_shard) instead of DDP
    log_every: int = 25
    grid_every: int = 200
    ckpt_every: int = 200
    eval_n: int = 500                    # fixed seeded oracle eval set at the end (0: none)
    eval_every: int = 0                  # also evaluate (oracle, small world) every N steps
    threads: int = 0                     # torch CPU threads (0: torch's default)


# Allowed values of every numeric option: "count1" >= 1, "count0" >= 0, "rate" finite and > 0,
# "weight" finite and >= 0, "prob" in [0, 1], "beta" (Adam's) in [0, 1).
RANGES = {"resolution": "count1", "judge_size": "count1", "seed": "count0", "batch_size": "count1",
          "ref_init": "prob", "warmup_steps": "count0", "warmup_lr": "rate", "max_steps": "count0",
          "lr": "rate", "decay_steps": "count0", "fake_lr": "rate", "beta1": "beta",
          "beta2": "beta", "n_aux": "count0", "w_vlm": "weight", "vlm_anneal": "weight",
          "w_dmd": "weight", "cfg": "weight", "dmd_t_min": "prob", "p_nothing": "prob",
          "vlm_by_type_from": "count0", "max_k": "count1", "shift": "rate",
          "vlm_temp_ramp": "count0", "group_size": "count1",
          "kl_coef": "weight", "ema": "prob", "grad_clip": "rate", "skip_grad_norm": "rate",
          "lora_rank": "count0", "log_every": "count1", "grid_every": "count1",
          "ckpt_every": "count1", "eval_n": "count0", "eval_every": "count0", "threads": "count0"}
ALLOWED = {"count1": (lambda v: v >= 1, "an integer >= 1"),
           "count0": (lambda v: v >= 0, "an integer >= 0"),
           "rate": (lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
           "weight": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
           "prob": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
           "beta": (lambda v: 0 <= v < 1, "a number in [0, 1)")}

_REAL = dict(kind="real", resolution=512, judge_size=448, batch_size=1, ref_init=0.0,
             warmup_steps=5000, warmup_lr=2e-5, max_steps=14000, lr=2e-5, cosine=False,
             decay_steps=0, fake_lr=2e-5, n_aux=5, w_vlm=0.02, vlm_anneal=1.0, cfg=3.5,
             type_mix="", vlm_by_type="", shift=6.0, vlm_temp_ramp=2000, ema=0.999, grad_ckpt=True,
             eval_n=0, log_every=10, grid_every=500, ckpt_every=500)
PRESETS = {
    # the shipped prior and judge, 2 CPU cores, 2 threads, seeds 0 / 1 / 2: success 0.846 / 0.848 /
    # 0.878, preservation 0.977-0.983, realism 0.902-0.942, every type >= 0.69, 12:50-12:58 on a
    # 2-core AMD EPYC (docs/log.md, "The cost of a run")
    "small": dict(),
    # random tiny models built from config; seconds on a CPU; for tests
    "tiny": dict(prior="random", judge="random", batch_size=4, warmup_steps=2, max_steps=3,
                 lr=2e-4, fake_lr=2e-4, cosine=False, decay_steps=0, n_aux=2, w_vlm=1.0,
                 vlm_anneal=1.0, type_mix="", log_every=1, grid_every=2, ckpt_every=2, eval_n=10),
    # real presets: the reimplementation's hyperparameters (docs/method.md); timed at their
    # published sizes with random weights on one H200 (docs/log.md, "GPU"); never run on real
    # weights
    "base": dict(_REAL, prior="Efficient-Large-Model/Sana_600M_512px_diffusers",
                 judge="Qwen/Qwen2.5-VL-3B-Instruct"),
    "large": dict(_REAL, prior="Efficient-Large-Model/Sana_1600M_512px_diffusers",
                  judge="Qwen/Qwen2.5-VL-7B-Instruct", fsdp=True),
}


def check(cfg):
    """Every value in its range (RANGES) and every choice known, or a one-line SystemExit."""
    for k, kind in RANGES.items():
        v = getattr(cfg, k)
        ok, allowed = ALLOWED[kind]
        if not ok(v):
            raise SystemExit(f"error: --{k} must be {allowed}, got {v!r}")
    if cfg.warmup_prompt not in ("caption", "instruction"):
        raise SystemExit(f"error: --warmup_prompt must be caption or instruction, got "
                         f"{cfg.warmup_prompt!r}")
    if cfg.method not in METHODS:
        raise SystemExit(f"error: --method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    if cfg.method == "grpo" and cfg.batch_size % cfg.group_size:
        raise SystemExit(f"error: --batch_size ({cfg.batch_size}) must be a multiple of "
                         f"--group_size ({cfg.group_size})")
    for key in ("cfg_by_type", "type_mix", "vlm_by_type"):
        try:
            per = per_type(getattr(cfg, key))
        except ValueError as e:
            raise SystemExit(f"error: --{key}: {e}")
        if cfg.kind == "small":  # real data names its own types; the small world has five
            from toyworld import EDIT_TYPES
            bad = [k for k in per if k not in EDIT_TYPES]
            if bad:
                raise SystemExit(f"error: --{key}: unknown edit type {bad[0]!r}; known: "
                                 f"{', '.join(EDIT_TYPES)}")
    w = type_weights(cfg)
    if w and (min(w) < 0 or not any(w) or not all(map(math.isfinite, w))):
        raise SystemExit(f"error: --type_mix: weights must be finite and >= 0, not all 0, got "
                         f"{cfg.type_mix!r}")
    return cfg


def parse_args(argv):
    """--config NAME, then --key=value overrides, type-checked against Config."""
    name, over = "small", {}
    types = {f.name: f.type for f in fields(Config)}
    it = iter(argv)
    for a in it:
        if a == "--config":
            name = next(it, None)
            continue
        if a.startswith("--config="):
            name = a.split("=", 1)[1]
            continue
        if not a.startswith("--") or "=" not in a:
            raise SystemExit(f"error: expected --config NAME or --key=value, got {a!r}")
        k, v = a[2:].split("=", 1)
        if k not in types:
            raise SystemExit(f"error: unknown config key {k!r}; known: {', '.join(types)}")
        typ = {"int": int, "float": float, "str": str, "bool": bool}[types[k]] \
            if isinstance(types[k], str) else types[k]
        try:
            if typ is bool:
                if v.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                over[k] = v.lower() in ("true", "1")
            else:
                over[k] = typ(v)
        except ValueError:
            raise SystemExit(f"error: --{k} wants a {typ.__name__}, got {v!r}")
        if typ is float and not math.isfinite(over[k]):
            raise SystemExit(f"error: --{k} must be a finite number, got {v!r}")
    if name not in PRESETS:
        raise SystemExit(f"error: unknown config {name!r}; choose from {', '.join(PRESETS)}")
    cfg = Config(**{**PRESETS[name], **over})
    if cfg.tiny and cfg.kind == "real":  # tiny twins: small images, few steps, no downloads
        cfg = Config(**{**PRESETS[name], "batch_size": 2, "warmup_steps": 1, "max_steps": 2,
                        "n_aux": 1, "judge_size": 56, "log_every": 1, "grid_every": 1,
                        "ckpt_every": 1, "lr": 1e-4, "fake_lr": 1e-4, "warmup_lr": 1e-4, **over})
    cfg.out_dir = cfg.out_dir or f"out/{name}"
    return name, check(cfg)


@lru_cache(maxsize=None)
def per_type(spec):
    """"add=8,color=5" -> {"add": 8.0, "color": 5.0}: --cfg_by_type and --type_mix (parsed once,
    not every training step)."""
    per = {}
    for item in filter(None, spec.split(",")):
        k, _, v = item.partition("=")
        try:
            per[k.strip()] = float(v)
        except ValueError:
            raise ValueError(f"expected TYPE=VALUE items separated by commas, got {item!r}") \
                from None
    return per


def cfg_scales(cfg, types):
    """The real score's CFG scale for each edit type in types: its cfg_by_type entry, else cfg.cfg
    (the reimplementation uses two scales by edit type, docs/method.md)."""
    per = per_type(cfg.cfg_by_type)
    return [per.get(t, cfg.cfg) for t in types]


def vlm_weights(cfg, types, step=0):
    """L_vlm's weight for each sample's edit type: its vlm_by_type entry, else 1 (None when
    vlm_by_type is empty or step is before vlm_by_type_from)."""
    per = per_type(cfg.vlm_by_type) if step >= cfg.vlm_by_type_from else None
    return [per.get(t, 1.0) for t in types] if per else None


def type_weights(cfg):
    """The small world's training mix: a weight per edit type (toyworld.EDIT_TYPES order) from
    cfg.type_mix, others 1; None when type_mix is empty (uniform, the default)."""
    from toyworld import EDIT_TYPES
    mix = per_type(cfg.type_mix)
    return [mix.get(t, 1.0) for t in EDIT_TYPES] if mix else None


def lr_factor(step, cfg, warmup=20):
    """Linear warm-up over 20 steps, then constant or (cfg.cosine) cosine decay to 0: over all
    max_steps, or (decay_steps > 0) held until the last decay_steps (warm-stable-decay)."""
    span = min(cfg.decay_steps or cfg.max_steps, cfg.max_steps)
    into = max(0, step - (cfg.max_steps - span))
    decay = 0.5 * (1 + math.cos(math.pi * into / span)) if cfg.cosine else 1.0
    return min(1.0, (step + 1) / warmup) * decay
