"""Edit an image with a trained editor.

    python sample.py --image in.png --instr "make the red circle blue"
    python sample.py --scene "a red circle at top left on a white background" --instr "..."

--scene renders a small-world input from its caption (see toyworld.caption), so no drawing is
needed. Any image PIL reads is accepted: transparent images are composited on white, grayscale,
palette and 16-bit images converted to RGB, and any size resized (bicubic) to the model's 32x32;
the output is written at the model's resolution (32x32) and, beside it, a 4x enlarged copy.
Bad input gives a one-line error and exit code 2. Instructions longer than the tokenizer's limit
(48 tokens in the small world) are truncated with a warning.
"""
import argparse
import os
import re
import sys

ERR = 2


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(ERR)


def load_image(path):
    """Any image file -> 32x32 RGB PIL image, or a one-line error."""
    from PIL import Image, UnidentifiedImageError
    if not os.path.exists(path):
        fail(f"no such file: {path}")
    if os.path.isdir(path):
        fail(f"{path} is a directory, not an image")
    if os.path.getsize(path) == 0:
        fail(f"{path} is empty (0 bytes)")
    try:
        im = Image.open(path)
        im.load()
    except UnidentifiedImageError:
        fail(f"{path} is not an image PIL can read")
    except (OSError, SyntaxError, ValueError) as e:
        fail(f"{path} could not be read ({e}); is it truncated?")
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit / float grayscale
        import numpy as np
        a = np.asarray(im, dtype=np.float64)
        a = (a - a.min()) / max(a.max() - a.min(), 1e-8) * 255
        im = Image.fromarray(a.astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    im = im.convert("RGB")
    if im.size != (32, 32):
        im = im.resize((32, 32), Image.BICUBIC)
    return im


def scene_from_caption(text):
    """'a red circle at top left and a blue square at bottom right on a white background'."""
    import toyworld as tw
    m = re.fullmatch(r"\s*(.*?)\s*on an? (\w+) background\s*", text.lower())
    if not m or m.group(2) not in tw.BACKGROUNDS:
        fail(f"--scene: could not read {text!r}; write it like toyworld captions, e.g. "
             "'a red circle at top left on a white background'")
    cells = [None] * 4
    for part in m.group(1).split(" and "):
        pm = re.fullmatch(r"an? (\w+) (\w+) at (top left|top right|bottom left|bottom right)", part)
        if not pm or pm.group(1) not in tw.COLORS or pm.group(2) not in tw.SHAPES:
            fail(f"--scene: could not read {part!r} (colours: {', '.join(tw.COLORS)}; shapes: "
                 f"{', '.join(tw.SHAPES)}; cells: {', '.join(tw.CELLS)})")
        cells[tw.CELLS.index(pm.group(3))] = (pm.group(1), pm.group(2))
    return tw.Scene(m.group(2), tuple(cells))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="input image file")
    src.add_argument("--scene", help="render a small-world input from its caption")
    p.add_argument("--instr", required=True, help="the edit instruction")
    p.add_argument("--ckpt", default="out/small", help="a training run's out_dir or ckpt folder")
    p.add_argument("--steps", type=int, default=4, choices=[1, 2, 3, 4])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out.png")
    a = p.parse_args(argv)
    if not a.instr.strip():
        fail("--instr is empty; say what to change, e.g. 'make the red circle blue'")
    if a.image:
        image = load_image(a.image)
    else:
        import toyworld as tw
        image = tw.render(scene_from_caption(a.scene))
    if not os.path.exists(a.ckpt):
        fail(f"no checkpoint at {a.ckpt}; train one with: python train.py --config small")
    import model as M
    import toyworld as tw
    from train import load_editor
    try:
        generator, cfg = load_editor(a.ckpt)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    tok = generator.tokenizer
    n = len(tok(a.instr).input_ids)
    if n > tok.model_max_length:
        print(f"warning: the instruction has {n} tokens; truncated to {tok.model_max_length}",
              file=sys.stderr)
    unknown = [w for w in tok.tokenize(a.instr.lower()) if w not in tok.get_vocab()]
    if unknown:
        print(f"warning: words the editor never saw: {' '.join(unknown)}", file=sys.stderr)
    ts = tuple(1 - i / a.steps for i in range(a.steps))  # 4 -> (1, .75, .5, .25)
    x = M.sample_edit(generator, tw.to_tensor([image]), [a.instr.lower()], steps=ts,
                      shift=cfg.shift, seed=a.seed)
    from PIL import Image
    out = Image.fromarray(tw.to_uint8(x)[0])
    out.save(a.out)
    big = os.path.splitext(a.out)[0] + "_x4.png"
    tw.grid([[image, out]], scale=4).save(big)
    print(f"wrote {a.out} (32x32) and {big} (input | output, 4x)")


if __name__ == "__main__":
    main()
