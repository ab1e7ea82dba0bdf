"""Checkpoints of a training run: written atomically, resumed exactly, loadable on one device.

    out/<config>/ckpt/model.safetensors   generator, EMA generator, fake score, torch RNG state
    out/<config>/ckpt/optim.pt            optimizer moments
    out/<config>/ckpt/state.json          stage, step, the full Config, python RNG state

Everything is written to a temp folder and swapped in by two renames (atomic_save_dir); a kill
at any moment leaves one complete checkpoint, in ckpt/ or, between the renames, in ckpt.old/,
which recover() moves back before a resume. Under FSDP the weights and moments are gathered to full tensors
first and rank 0 alone writes, so a checkpoint trained on eight GPUs loads (and resumes) on one.
"""
import json
import os
import shutil
from dataclasses import asdict, fields

import torch
from safetensors.torch import load_file, save_file

import model as M
from config import Config

EDITOR_JSON = "editor.json"  # an export.py folder: the Config fields its editor needs
KEYS = ("kind", "prior", "judge", "resolution", "shift", "tiny", "seed")


def recover(path):
    """A kill between atomic_save_dir's two renames leaves no `path` but a complete `path.old`:
    move it back. -> path."""
    if not os.path.exists(path) and os.path.exists(path + ".old"):
        os.replace(path + ".old", path)
    return path


def atomic_save_dir(path, write):
    """write(tmp), then swap it in: path -> path.old, tmp -> path, remove path.old. Whenever a
    kill lands, a complete folder sits at path, or at path.old (recover() restores it)."""
    recover(path)
    tmp, old = path + ".tmp", path + ".old"
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    if os.path.exists(path):
        shutil.rmtree(old, ignore_errors=True)  # a stale one from a kill after the swap
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def shard(*modules):
    """FSDP2: fully_shard every transformer block of each module, then the module itself."""
    from torch.distributed.fsdp import fully_shard
    for m in modules:
        for block in getattr(m, "transformer", m).transformer_blocks:
            fully_shard(block)
        fully_shard(m)


def replicas_identical(module, device, fsdp=False):
    """Do all ranks hold the same weights? (a collective: all ranks call)"""
    import torch.distributed as dist
    flat = torch.cat([(p.detach().full_tensor() if fsdp else p.detach()).flatten().float().cpu()
                      for p in module.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat.to(device))
    return all(torch.equal(gathered[0].cpu(), g.cpu()) for g in gathered)


def close_distributed():
    """gloo's worker thread frees finished collectives, which needs the GIL; tearing the group
    down (DDP's reducer) while it does deadlocked ~1 run in 5, so let it drain first."""
    import time

    import torch.distributed as dist
    dist.barrier()
    time.sleep(1)
    dist.destroy_process_group()


def full_state(module, fsdp=False):
    """A module's full (unsharded) state dict on CPU; a collective under FSDP (all ranks call)."""
    if not fsdp:
        return module.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True,
                                                                 cpu_offload=True))


def optim_state(opt, module, fsdp=False):
    """Optimizer moments keyed by parameter name (not position), one format with and without
    FSDP, so a run can move between one device and many."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    return get_optimizer_state_dict(module, opt, options=StateDictOptions(
        full_state_dict=fsdp, cpu_offload=fsdp))


def save_checkpoint(path, stage, step, modules, opts, rng, cfg, rank=0, fsdp=False):
    """modules: {"generator": .., "ema": .., "fake_score": ..}; opts: {name: (optimizer, module)}.
    All ranks call it (FSDP gathers); rank 0 alone writes."""
    states = {name: full_state(m, fsdp) for name, m in modules.items()}
    moments = {k: optim_state(o, m, fsdp) for k, (o, m) in opts.items()}
    if rank != 0:
        return

    def write(d):
        os.makedirs(d)
        tensors = {f"{name}.{k}": v for name, sd in states.items() for k, v in sd.items()}
        tensors["rng.torch"] = torch.get_rng_state()
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                  f"{d}/model.safetensors")
        torch.save(moments, f"{d}/optim.pt")
        json.dump({"stage": stage, "step": step, "config": asdict(cfg),
                   "rng.python": rng.getstate()}, open(f"{d}/state.json", "w"))
    atomic_save_dir(path, write)


def load_checkpoint(path, modules, opts, rng, fsdp=False):
    """Restore weights, optimizer moments and both RNGs (every rank reads the files);
    -> (stage, step)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)
    full = StateDictOptions(full_state_dict=True)
    recover(path)
    w = load_file(f"{path}/model.safetensors")
    for name, m in modules.items():
        sd = {k[len(name) + 1:]: v for k, v in w.items() if k.startswith(name + ".")}
        set_model_state_dict(m, sd, options=full) if fsdp else m.load_state_dict(sd)
    torch.set_rng_state(w["rng.torch"])
    for k, sd in torch.load(f"{path}/optim.pt", map_location="cpu").items():
        if k in opts:
            o, m = opts[k]
            set_optimizer_state_dict(m, o, sd, options=full if fsdp else None)
    st = json.load(open(f"{path}/state.json"))
    v, state, gauss = st["rng.python"]
    rng.setstate((v, tuple(state), gauss))
    return st["stage"], st["step"]


def load_real_editor(cfg, device="cpu", prior=None, ema=None, exported=None):
    """A real preset's trained editor, for inference -> (generator, vae), frozen, on device.

    The frozen models come from the run's base model: `prior` (a local copy) or cfg.prior; a
    tiny run's twins are rebuilt from cfg.seed, the seed train.py sets right before building
    them, so they are the very weights it trained with. The transformer is either a run's EMA
    (ema: its state dict, Generator keys) put into the generator built as in training, LoRA
    adapters included (cfg.lora_rank) and then merged into the weights, or an export.py folder
    (exported: a SanaTransformer2DModel with the doubled in_channels, LoRA already merged)."""
    import real
    with torch.random.fork_rng():  # (the caller's RNG stream is left as it was)
        torch.manual_seed(cfg.seed)
        transformer, vae, text_encoder, tok = real.load_text_to_image(
            prior or cfg.prior, cfg.tiny, cfg.resolution, key="prior")
    cache = real.TextCache(text_encoder.to(device), tok)
    if exported:
        generator = M.Generator(real.SanaTransformer2DModel.from_pretrained(exported), None, tok, cache)
    else:
        generator = M.Generator.from_prior(transformer, None, tok, text_cache=cache)
        if cfg.lora_rank:
            M.add_lora(generator.transformer, cfg.lora_rank)
        generator.load_state_dict(ema)  # RuntimeError when the run does not fit its preset
        if cfg.lora_rank:  # W + B A into W, then drop the adapters: a plain Sana transformer
            generator.transformer.fuse_lora()
            generator.transformer.unload_lora()
    return (generator.to(device).eval().requires_grad_(False),
            vae.to(device).eval().requires_grad_(False))


def real_editor_fn(generator, vae, device, shift):
    """-> edit(PIL references at the run's resolution, instructions) -> uint8 images: encode the
    reference, the 4-step sampler on latents (model.sample_edit, unclamped: latents are not in
    [-1, 1]), decode. The latent twin of model.editor_fn."""
    import real
    import toyworld as tw

    def edit(refs, instructions):
        z = real.vae_encode(vae, tw.to_tensor(refs).to(device))
        x = M.sample_edit(generator, z, instructions, shift=shift, clamp=False)
        with torch.no_grad():
            return list(tw.to_uint8(real.vae_decode(vae, x)))
    return edit


def load_export(path, device="cpu", prior=None):
    """An exported folder -> (generator, Config, vae); vae None in the small world. A real
    export's VAE and text encoder come from its base model (editor.json's prior, or `prior`)."""
    info = json.load(open(os.path.join(path, EDITOR_JSON)))
    cfg = Config(**{k: info[k] for k in KEYS if k in info})
    if cfg.kind == "real":
        generator, vae = load_real_editor(cfg, device, prior, exported=path)
        return generator, cfg, vae
    from diffusers import SanaTransformer2DModel
    from transformers import AutoTokenizer, BertModel
    transformer = M.use_softmax_attention(SanaTransformer2DModel.from_pretrained(path))
    text_encoder = BertModel.from_pretrained(f"{path}/text_encoder", add_pooling_layer=False)
    tok = AutoTokenizer.from_pretrained(f"{path}/tokenizer")
    generator = M.Generator(transformer, text_encoder, tok)
    return generator.to(device).eval().requires_grad_(False), cfg, None


def load_editor(path, device="cpu", prior=None, vae=False):
    """The EMA editor of a training run or of an export: path is a run's out_dir or ckpt folder,
    or a folder written by export.py. -> (generator, Config); vae=True: (generator, Config, vae),
    vae None in the small world (it edits pixels). A real preset's run rebuilds its frozen models
    from the base model its Config names, or from `prior`, a folder holding it (the small world:
    another prior folder). Raises FileNotFoundError / ValueError with a one-line reason for a
    missing or foreign checkpoint; base weights that cannot be loaded (offline, not downloaded)
    are a one-line SystemExit naming them (real._fail)."""
    if os.path.exists(os.path.join(path, EDITOR_JSON)):
        out = load_export(path, device, prior)
        return out if vae else out[:2]
    ckpt = path if os.path.exists(f"{path}/state.json") else f"{path}/ckpt"
    if not os.path.exists(f"{ckpt}/state.json") or not os.path.exists(f"{ckpt}/model.safetensors"):
        raise FileNotFoundError(f"no checkpoint in {path!r} (expected {ckpt}/state.json and "
                                "model.safetensors; train one with: python train.py)")
    try:
        st = json.load(open(f"{ckpt}/state.json"))
        known = {f.name for f in fields(Config)}  # options added or dropped since: defaults
        cfg = Config(**{k: v for k, v in st["config"].items() if k in known})
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"{ckpt}/state.json is not a checkpoint of this repo ({e})")
    ema = {k[4:]: v for k, v in load_file(f"{ckpt}/model.safetensors").items()
           if k.startswith("ema.")}
    try:
        if cfg.kind == "real":
            generator, ae = load_real_editor(cfg, device, prior, ema=ema)
        else:
            prior = prior or cfg.prior
            if prior != "random" and not os.path.isdir(prior):
                raise FileNotFoundError(f"the run's prior {prior!r} is missing; pass the folder "
                                        "it was trained from with --prior PATH")
            generator, ae = M.Generator.from_prior(*M.small_prior(prior)), None
            generator.load_state_dict(ema)
            generator = generator.to(device).eval().requires_grad_(False)
    except RuntimeError as e:
        raise ValueError(f"{ckpt} does not match its preset's model ({str(e).splitlines()[0]})")
    return (generator, cfg, ae) if vae else (generator, cfg)
