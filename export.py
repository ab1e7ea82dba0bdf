"""Export a trained editor as a diffusers model folder that loads without this repo's checkpoints.

    python export.py --ckpt out/base --out exported/base          # --force to replace it

Writes into the folder:
  config.json, diffusion_pytorch_model.safetensors
      the EMA generator's transformer (SanaTransformer2DModel.save_pretrained): the prior's
      architecture with in_channels doubled (the noisy latent and the reference, concatenated
      along channels), LoRA adapters of a --lora_rank run merged into the weights (peft, through
      diffusers' fuse_lora); load it with SanaTransformer2DModel.from_pretrained(folder);
  text_encoder/, tokenizer/   small-world runs only: their text encoder is trained with the
      editor (a real run's is the frozen one of its base model, loaded from there);
  editor.json   what sampling needs besides the weights: kind, the base model (prior: VAE and
      text encoder), resolution, the sampler's time shift, the tiny flag and seed (a tiny run's
      random twins are rebuilt from it), where it came from;
  README.md     a short model card: base models, preset, steps, how to load and run it.
sample.py --ckpt FOLDER and eval.py --gedit --ckpt FOLDER edit with an export as with the run.
An existing folder is refused unless --force; the folder is written whole or not at all.
"""
import argparse
import json
import os
import sys

from checkpoint import EDITOR_JSON, KEYS  # what sample.py needs to load an export

CARD = """# NP-Edit editor: {name}

An instruction-following image editor trained without image editing pairs (NP-Edit, arXiv
2510.14978): {what}, exported by `export.py` from the run `{ckpt}` ({stage} step {step};
identity warm-up {warmup_steps} steps, then {max_steps} NP-Edit steps).

| | |
|---|---|
| preset | {preset} |
| base text-to-image model (prior; {frozen}) | `{prior}` |
| VLM judge used in training | `{judge}` |
| resolution, sampler | {resolution} px; 4 steps (t = 1, .75, .5, .25, time shift {shift}), no CFG |
| LoRA | {lora} |
{tiny_note}
## Use

```bash
python sample.py --ckpt {out} --image photo.jpg --instr "make the car red" --out edited.png
python eval.py --gedit GEDIT_DIR --ckpt {out} --judge Qwen/Qwen2.5-VL-7B-Instruct
```

```python
from diffusers import SanaTransformer2DModel
transformer = SanaTransformer2DModel.from_pretrained("{out}")  # in_channels: 2 x the prior's
```
The transformer predicts the velocity of `[noisy target, reference]` stacked along channels
({space}); `model.sample_edit` in the NP-Edit repo is the sampler.{softmax}
"""


def preset_of(cfg):
    """The preset whose base models the run used (its name is not stored in the checkpoint)."""
    from config import PRESETS, Config
    for name, p in PRESETS.items():
        if all(p.get(k, getattr(Config, k)) == getattr(cfg, k) for k in ("kind", "prior", "judge")):
            return name + (" (tiny twins)" if cfg.tiny else "")
    return "custom"


def export(ckpt, out, force=False, prior=None):
    """Write the editor of the run at ckpt into the folder out (see the module docstring)."""
    from checkpoint import atomic_save_dir, load_editor
    if os.path.exists(out) and not force:
        raise FileExistsError(f"{out} exists; pass --force to replace it")
    if os.path.exists(os.path.join(ckpt, EDITOR_JSON)):
        raise ValueError(f"{ckpt} is an export already; export a training run")
    o, c = os.path.abspath(out), os.path.abspath(ckpt)
    if os.path.commonpath([o, c]) == o:  # --force there would delete the run itself
        raise ValueError(f"--out {out} holds the run {ckpt}; export somewhere else")
    generator, cfg = load_editor(ckpt, prior=prior)  # EMA weights, LoRA merged
    st = json.load(open(os.path.join(ckpt if os.path.exists(f"{ckpt}/state.json")
                                     else f"{ckpt}/ckpt", "state.json")))
    info = {k: getattr(cfg, k) for k in KEYS} | {
        "preset": preset_of(cfg), "lora_rank_merged": cfg.lora_rank, "stage": st["stage"],
        "step": st["step"], "warmup_steps": cfg.warmup_steps, "max_steps": cfg.max_steps,
        "exported_from": os.path.abspath(ckpt),
        "attention": "softmax" if cfg.kind == "small" else "sana (linear)"}
    latent = cfg.kind == "real"  # SANA on DC-AE latents; else the small world's pixels
    card = CARD.format(
        name=os.path.basename(os.path.abspath(out)), ckpt=ckpt, out=out, **info,
        what="SANA edited in its DC-AE latent space" if latent else
        "the small world's 32x32 editor",
        frozen="its VAE and text encoder are loaded from it" if latent else
        "its text encoder was trained with the editor and is exported here",
        lora=f"rank {cfg.lora_rank}, merged into the weights" if cfg.lora_rank else "none",
        tiny_note="\n**Tiny random twins**: a test run; its outputs mean nothing.\n"
        if cfg.tiny else "",
        space="DC-AE latents: encode the reference with the VAE, decode the result" if latent
        else "pixels in [-1, 1]",
        softmax="" if latent else " Small world: set softmax self-attention first "
        "(`model.use_softmax_attention(transformer)`), as the prior was trained with it.")

    def write(d):
        generator.transformer.save_pretrained(d)
        if not latent:  # the small world's text encoder is part of what was trained
            generator.text_encoder.save_pretrained(f"{d}/text_encoder")
            generator.tokenizer.save_pretrained(f"{d}/tokenizer")
        json.dump(info, open(f"{d}/{EDITOR_JSON}", "w"), indent=1)
        open(f"{d}/README.md", "w").write(card)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    atomic_save_dir(out, write)
    return info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a training run's out_dir or ckpt folder")
    p.add_argument("--out", required=True, help="the folder to write")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--prior", default=None, help="a local copy of the run's base model")
    a = p.parse_args(argv)
    import real
    real.quiet()
    try:
        info = export(a.ckpt, a.out, a.force, a.prior)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except SystemExit as e:  # base weights not found (real._fail): its line, exit code 2
        print(e.code, file=sys.stderr)
        sys.exit(2)
    print(f"wrote {a.out}: the {info['preset']} editor ({info['stage']} step {info['step']}), "
          f"README.md and {EDITOR_JSON}")


if __name__ == "__main__":
    main()
