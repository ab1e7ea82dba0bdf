"""Edit images with a trained editor: a small-world run, a real preset's run, or an export.

    python sample.py --ckpt out/base --image photo.jpg --instr "make the car red" --out red.png
    python sample.py --ckpt out/base --image photos/ --instr "make it snow" --out snowy/
    python sample.py --ckpt exported/base --image edits.jsonl --out edited/ --keep_size
    python sample.py --scene "a red circle at top left on a white background" --instr "..."

--ckpt is a run's out_dir (or its ckpt folder) or a folder written by export.py. A real run
rebuilds its VAE and text encoder from the base model it was trained on (the hub id or folder in
its config; --prior PATH: a local copy); offline without those weights, a one-line error names
them. The editor is model.sample_edit's 4 steps at the run's time shift, no CFG, seed 0 (so an
output is reproducible); real runs edit the VAE's latents (encode, sample, decode).

--image: an image file, a folder of images (not recursive), or a JSONL of {"image": path
relative to the JSONL, "instruction": str} (--instr then fills the rows without one). Any image
PIL reads (EXIF rotation applied, transparency on white, grayscale, palette, 16-bit made RGB) of
any size and aspect: it is resized so its SHORT side is the run's resolution (32 px small world,
512 px base and large), then center-cropped to a square: the square is what the editor sees.
Output: that square, edited, at the run's resolution; with --keep_size, at the input's size: the
edited square scaled back over the crop it came from, the margins outside the crop (which the
editor never saw) kept from the input. One image: --out FILE (default out.png; the small world
also writes FILE_x4.png, input | output enlarged 4x); a folder or a JSONL: --out FOLDER (default
edited/), one NAME.png per input. Folders --out needs are created.
--scene renders a small-world input from a complete caption (toytext.read_caption): no drawing needed.
Bad input is a one-line error and exit code 2. Warnings: instructions over the text encoder's
limit (48 tokens small world, 300 real) are truncated; words a word-level tokenizer (the small
world's, the tiny twins') does not know are read as [UNK].
"""
import argparse
import os
import sys

ERR = 2
EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")  # what --out may be


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(ERR)


def open_image(path):
    """Any image file -> RGB PIL image at its own size, or a one-line error saying why not."""
    import real
    from PIL import Image, UnidentifiedImageError
    if not os.path.exists(path):
        fail(f"no such file: {path}")
    if os.path.getsize(path) == 0:
        fail(f"{path} is empty (0 bytes)")
    try:
        return real.open_rgb(path)
    except ValueError as e:  # real.open_rgb keeps PIL's error as the cause
        cause = e.__cause__
        if isinstance(cause, UnidentifiedImageError):
            fail(f"{path} is not an image PIL can read")
        if isinstance(cause, Image.DecompressionBombError):
            fail(f"{path} is too large to edit ({cause})")
        fail(f"{path} could not be read ({cause}); is it truncated?")


def scene_from_caption(text):
    """A complete caption of the small world (every object with its place, toytext.caption),
    e.g. 'a red circle at top left and a blue square at the bottom right on a white background'
    -> the Scene, or a one-line error."""
    import toytext as tt
    import toyworld as tw
    try:
        cap = tt.read_caption(" ".join(text.lower().split()))
    except ValueError:
        fail(f"--scene: could not read {text!r}; write it like a caption of the small world, e.g. "
             "'a red circle at top left on a white background'")
    cells = [None] * 4
    for c, s, cell, n in cap.items:
        if c not in tw.COLORS or s not in tw.SHAPES or cell is None or n != 1:
            fail(f"--scene: name each object as a colour, a shape and a place (colours: "
                 f"{', '.join(tw.COLORS)}; shapes: {', '.join(tw.SHAPES)}; places: "
                 f"{', '.join(tw.CELLS)})")
        cells[cell] = (c, s)
    if cap.bg not in tw.BACKGROUNDS:
        fail(f"--scene: the background must be one of {', '.join(tw.BACKGROUNDS)}")
    return tw.Scene(cap.bg, tuple(cells))


def load(ckpt, device, prior=None):
    """-> (edit, cfg, generator): edit(PIL squares at cfg.resolution, instructions) -> uint8
    images, for any run or export (checkpoint.load_editor); a one-line error if it cannot."""
    import model as M
    import real
    from checkpoint import load_editor, real_editor_fn
    if not os.path.exists(ckpt):
        fail(f"no checkpoint at {ckpt}; train one with: python train.py --config small")
    real.quiet()  # the weight-loading progress bars: noise on stderr
    try:
        generator, cfg, vae = load_editor(ckpt, device, prior, vae=True)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    except SystemExit as e:  # base weights not found (real._fail): its line, our exit code
        fail(str(e.code).removeprefix("error: "))
    edit = real_editor_fn(generator, vae, device, cfg.shift) if vae is not None else \
        M.editor_fn(generator, device, cfg.shift)
    return edit, cfg, generator


def warnings_for(generator, instruction):
    """What the text encoder will not read as written: past its token limit, or (word-level
    tokenizers) words outside its vocabulary, which it maps to [UNK] (itself in the vocabulary,
    so checking tokens would never fire: the words themselves are checked)."""
    from tokenizers.models import WordLevel
    tok, out = generator.tokenizer, []
    limit = generator.text_cache.max_length if generator.text_cache else tok.model_max_length
    n = len(tok(instruction).input_ids)
    if n > limit:
        out.append(f"the instruction has {n} tokens; truncated to {limit}")
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None and isinstance(backend.model, WordLevel):
        vocab = tok.get_vocab()
        words = [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(instruction)]
        unknown = [w for w in dict.fromkeys(words) if w not in vocab]
        if unknown:
            out.append(f"words the editor never saw (read as [UNK]): {' '.join(unknown)}")
    return out


def edit_image(edit, cfg, image, instruction, keep_size=False):
    """One input (RGB PIL, any size) -> (edited PIL, the square the editor saw)."""
    import real
    from PIL import Image
    ref = real.square(image, cfg.resolution)
    out = Image.fromarray(edit([ref], [instruction])[0])
    if keep_size:  # the edit scaled back over its crop; the uncropped margins from the input
        w, h = image.size
        s = min(w, h)
        full = image.copy()
        full.paste(out.resize((s, s), Image.Resampling.BICUBIC), ((w - s) // 2, (h - s) // 2))
        out = full
    return out, ref


def jobs(a):
    """--image and --out -> ([(input path, instruction, output path)], batch), checked before
    any model loads; batch: the input is a folder or a JSONL."""
    import real
    from PIL import Image
    src = a.image or "scene"
    batch = a.image is not None and (os.path.isdir(src) or src.endswith(".jsonl"))
    out = a.out or ("edited" if batch else "out.png")
    if not batch:
        if os.path.isdir(out):
            fail(f"--out {out} is a folder; name the file to write, e.g. {out}/edited.png")
        ext = os.path.splitext(out)[1].lower()
        if ext not in EXTENSIONS:
            fail(f"--out {out}: {'unknown image extension ' + repr(ext) if ext else 'no extension'}"
                 f"; use one of {', '.join(EXTENSIONS)}")
        return [(src, a.instr, out)], False
    if os.path.isfile(out):
        fail(f"--out {out} is a file; a folder or JSONL input writes a folder of images")
    if os.path.isdir(src):
        known = set(Image.registered_extensions())
        rows = [{"image": os.path.join(src, f)} for f in sorted(os.listdir(src))
                if os.path.splitext(f)[1].lower() in known]
        if not rows:
            fail(f"no images in {src}")
    else:
        try:
            rows = real.read_jsonl(src, fields=("image",), optional=("instruction",))
        except ValueError as e:
            fail(str(e))
    todo = []
    for i, r in enumerate(rows):
        instruction = r.get("instruction") or a.instr
        if not instruction:
            fail(f"{src}: row {i + 1} ({r['image']}) has no instruction and --instr is not given")
        stem = os.path.splitext(os.path.basename(r["image"]))[0]
        todo.append((r["image"], instruction, os.path.join(
            out, f"{stem}.png" if os.path.isdir(src) else f"{i:05d}_{stem}.png")))
    names = [t[2] for t in todo]
    if len(set(names)) < len(names):
        fail(f"{src}: two inputs share a name (e.g. a.jpg and a.png); rename one")
    return todo, True


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="an image, a folder of images, or a JSONL of "
                     '{"image", "instruction"}')
    src.add_argument("--scene", help="render a small-world input from its caption")
    p.add_argument("--instr", help="the edit instruction (JSONL input: for rows without one)")
    p.add_argument("--ckpt", default="out/small", help="a run's out_dir or ckpt folder, or an "
                   "export.py folder")
    p.add_argument("--prior", default=None, help="a local copy of the run's base model")
    p.add_argument("--out", default=None, help="the image to write (default out.png), or for a "
                   "folder or JSONL input the folder (default edited/); created if missing")
    p.add_argument("--keep_size", action="store_true", help="write the output at the input's "
                   "size (the edited square pasted back over its crop)")
    a = p.parse_args(argv)
    if a.instr is not None and not a.instr.strip():
        fail("--instr is empty; say what to change, e.g. 'make the red circle blue'")
    if a.instr is None and not (a.image and a.image.endswith(".jsonl")):
        fail("--instr is required (only a JSONL input carries its own instructions)")
    if a.scene:
        import toyworld as tw
        scene = tw.render(scene_from_caption(a.scene))
    todo, batch = jobs(a)
    first = None if batch else scene if a.scene else open_image(todo[0][0])  # fail fast
    import torch
    from tqdm import tqdm
    device = "cuda" if torch.cuda.is_available() else "cpu"
    edit, cfg, generator = load(a.ckpt, device, a.prior)
    if a.scene and cfg.kind != "small":
        fail("--scene draws small-world inputs; this run edits photos: pass --image")
    for path, instruction, out in tqdm(todo, desc="editing", disable=not batch):
        instruction = instruction.lower()  # as the instructions the editor trained on
        for w in warnings_for(generator, instruction):
            tqdm.write(f"warning: {os.path.basename(path)}: {w}", file=sys.stderr)
        image = first if first is not None else open_image(path)
        edited, ref = edit_image(edit, cfg, image, instruction, a.keep_size)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        edited.save(out)
    if not batch and cfg.kind == "small":
        import toyworld as tw
        big = os.path.splitext(out)[0] + "_x4.png"
        tw.grid([[ref, edited.resize(ref.size)]], scale=4).save(big)
        print(f"wrote {out} ({edited.width}x{edited.height}) and {big} (input | output, 4x)")
    else:
        print(f"wrote {len(todo)} image(s): {out if not batch else a.out or 'edited'} "
              f"({edited.width}x{edited.height}{' the last' if batch else ''})")


if __name__ == "__main__":
    main()
