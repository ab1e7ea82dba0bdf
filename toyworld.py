"""The small world: procedural 32x32 scenes, captions, edit instructions, and an exact oracle.

A scene is a background colour plus a 2x2 grid of 16 px cells, each empty or holding one object
(a colour and a shape, drawn ~12 px large). Every training sample of NP-Edit,
(reference y, instruction c, caption c_y, edited caption c_x) in docs/method.md, is drawn
from here, and because the world is procedural the target scene is known exactly, so an oracle
can score every edit (success, preservation, realism) without a human or a VLM.

The editor never sees a rendered target during NP-Edit training: targets exist only for the
oracle, for the judge's own pretraining, and for the SFT baseline of the ablation table.

Held out from everything the editor trains on (evaluation only):
  - colour x shape combinations HELDOUT_COMBOS (purple triangle, yellow circle, green square);
  - one phrasing per edit type (the last template of each list in PHRASINGS).
The prior and the judge (the "pretrained foundation models" of this world) see all combinations.

    python toyworld.py    # writes toyworld_examples.png, a grid of scenes and edits
"""
import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SIZE, CELL = 32, 16
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}
COLORS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (40, 70, 230),
          "yellow": (235, 205, 20), "purple": (150, 50, 200)}
SHAPES = ("circle", "square", "triangle")
CELLS = ("top left", "top right", "bottom left", "bottom right")
CELL_XY = ((0, 0), (16, 0), (0, 16), (16, 16))  # (x, y) of each cell's top-left pixel
EDIT_TYPES = ("color", "remove", "add", "shape", "background")
HELDOUT_COMBOS = {("purple", "triangle"), ("yellow", "circle"), ("green", "square")}
UNRECOGNISED = "?"  # a cell the oracle cannot read

# Instruction templates per type; the LAST one of each list is held out for evaluation.
PHRASINGS = {
    "color": ["make the {obj} {color}", "change the {obj} to {color}", "paint the {obj} {color}",
              "recolor the {obj} {color}"],
    "remove": ["remove the {obj}", "delete the {obj}", "take away the {obj}", "get rid of the {obj}"],
    "add": ["add a {color} {shape} at {cell}", "put a {color} {shape} at {cell}",
            "draw a {color} {shape} at {cell}", "insert a {color} {shape} at {cell}"],
    "shape": ["make the {obj} a {shape}", "turn the {obj} into a {shape}",
              "change the {obj} into a {shape}", "reshape the {obj} into a {shape}"],
    "background": ["make the background {bg}", "change the background to {bg}",
                   "set the background to {bg}", "paint the background {bg}"],
    "none": ["do nothing", "keep the image unchanged", "leave the image as it is",
             "change nothing"],
}


@dataclass(frozen=True)
class Scene:
    """bg: a key of BACKGROUNDS; cells: 4 entries (CELLS order), each None, (color, shape) or '?'."""
    bg: str
    cells: tuple

    def objects(self):
        return [(i, c) for i, c in enumerate(self.cells) if c is not None]


@dataclass(frozen=True)
class Edit:
    """An edit of a reference scene y: the instruction c and the target scene (which only the
    oracle, the judge's pretraining and the SFT baseline ever see); caption c_y and edited
    caption c_x are the prior's text for y and for the target."""
    type: str          # one of EDIT_TYPES or "none"
    instruction: str
    reference: Scene
    target: Scene
    touched: tuple     # scene elements the instruction may change: "bg" and/or cell indices
    object: str = None          # a removal's object, as the instruction names it
    caption: str = None         # c_y (default: prompt(reference))
    edited_caption: str = None  # c_x, what the real and fake scores see (default: prompt(target))

    def __post_init__(self):
        if self.caption is None:
            object.__setattr__(self, "caption", prompt(self.reference))
        if self.edited_caption is None:
            object.__setattr__(self, "edited_caption", prompt(self.target))


# ----------------------------------------------------------------------------- rendering

def _shape_poly(shape, x0, y0, x1, y1):
    if shape == "triangle":  # isosceles, pointing up
        return [((x0 + x1) / 2, y0), (x0, y1), (x1, y1)]
    return [x0, y0, x1, y1]


def _draw(draw, shape, box, fill):
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon(_shape_poly(shape, *box), fill=fill)


def render(scene):
    """Scene -> 32x32 RGB PIL image (no anti-aliasing, so parses are exact)."""
    img = Image.new("RGB", (SIZE, SIZE), BACKGROUNDS[scene.bg])
    draw = ImageDraw.Draw(img)
    for i, obj in scene.objects():
        x, y = CELL_XY[i]
        _draw(draw, obj[1], (x + 2, y + 2, x + 13, y + 13), COLORS[obj[0]])
    return img


def to_tensor(images):
    """list of PIL images -> float tensor (B, 3, 32, 32) in [-1, 1]."""
    import torch
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def to_uint8(x):
    """tensor (B, 3, H, W) in [-1, 1] -> uint8 numpy (B, H, W, 3)."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round()
    return x.permute(0, 2, 3, 1).to("cpu").numpy().astype(np.uint8)


# ----------------------------------------------------------------------------- text

def _name(obj):
    return f"{obj[0]} {obj[1]}"


def sentence(scene):
    """The scene as a sentence: 'a red circle at top left and a blue square at bottom right on a white
    background' (objects in CELLS order, so every scene has exactly one caption)."""
    objs = [f"a {_name(o)} at {CELLS[i]}" for i, o in scene.objects()]
    return (" and ".join(objs) if objs else "nothing") + f" on a {scene.bg} background"


def prompt(scene, rng=None):
    """The prior's text condition, c_y and c_x: the content of sentence() with a fixed cell order
    and the same number of words per cell, so token position names the cell ('top left red
    circle . top right empty cell . ...'); with a bidirectional encoder this fixed object binding
    (docs/log.md, "The prior").
    With rng, the four cell segments come in a random order, so only the words name the cell
    (pretrain.py --shuffle: a prior that reads "top right" as a place, as an editor must)."""
    parts = [f"{CELLS[i]} {_name(c) if c else 'empty cell'}" for i, c in enumerate(scene.cells)]
    if rng is not None:
        rng.shuffle(parts)
    return " . ".join(parts) + f" . background {scene.bg}"


def vocabulary():
    """Every word that captions, prompts and instructions of this world can contain."""
    words = set("a at and on background nothing . empty cell".split())
    for v in [*BACKGROUNDS, *COLORS, *SHAPES, *CELLS]:
        words.update(v.split())
    for templates in PHRASINGS.values():
        for t in templates:
            words.update(w for w in t.split() if not w.startswith("{"))
    return sorted(words)


def build_tokenizer(extra_words=(), extra_special=()):
    """A word-level tokenizer of this world, built locally and wrapped as a transformers fast
    tokenizer (save it with save_pretrained; load it back with AutoTokenizer)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *extra_special]
    words = special + vocabulary()
    words += sorted(set(extra_words) - set(words))
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A", special_tokens=[("[CLS]", vocab["[CLS]"])])
    tok.add_special_tokens(special)  # matched whole, before splitting on punctuation
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]",
                                   model_max_length=256 if extra_special else 48)


# ----------------------------------------------------------------------------- sampling

def _combo_ok(obj, split):
    return split == "all" or (obj not in HELDOUT_COMBOS) == (split == "train")


ALL_OBJECTS = [(c, s) for c in COLORS for s in SHAPES]


def random_scene(rng, split="all", n_objects=None):
    """1-2 objects in distinct cells. split 'train' avoids HELDOUT_COMBOS; 'all' allows all."""
    n = n_objects or rng.choice((1, 2))
    cells = [None] * 4
    pool = [o for o in ALL_OBJECTS if split != "train" or o not in HELDOUT_COMBOS]
    for i in rng.sample(range(4), n):
        cells[i] = rng.choice(pool)
    return Scene(rng.choice(list(BACKGROUNDS)), tuple(cells))


def _ref(scene, i):
    """How an instruction names the object in cell i: by colour and shape, plus its cell when
    another object in the scene has the same colour and shape."""
    obj = scene.cells[i]
    same = [j for j, o in scene.objects() if o == obj]
    return _name(obj) + (f" at {CELLS[i]}" if len(same) > 1 else "")


def apply_edit(scene, type, cell=None, color=None, shape=None, bg=None, phrasing=0):
    """Apply one edit to a scene; returns an Edit. Raises ValueError for an impossible edit
    (an empty cell to edit or remove, an occupied cell or a full grid to add to, a no-op)."""
    cells = list(scene.cells)
    t = PHRASINGS[type][phrasing]
    if type == "none":
        return Edit(type, t, scene, scene, ())
    if type == "background":
        if bg == scene.bg:
            raise ValueError(f"background is already {bg}")
        return Edit(type, t.format(bg=bg), scene, Scene(bg, scene.cells), ("bg",))
    if type == "add":
        if all(c is not None for c in cells):
            raise ValueError("cannot add an object: the grid is full")
        if cells[cell] is not None:
            raise ValueError(f"cannot add at {CELLS[cell]}: the cell is occupied")
        cells[cell] = (color, shape)
        return Edit(type, t.format(color=color, shape=shape, cell=CELLS[cell]), scene,
                    Scene(scene.bg, tuple(cells)), (cell,))
    if cell is None or cells[cell] is None:
        raise ValueError(f"cannot {type} at {CELLS[cell] if cell is not None else None}: "
                         "the cell is empty")
    obj, name = cells[cell], _ref(scene, cell)
    if type == "remove":
        cells[cell] = None
        return Edit(type, t.format(obj=name), scene, Scene(scene.bg, tuple(cells)), (cell,), name)
    elif type == "color":
        if color == obj[0]:
            raise ValueError(f"the object is already {color}")
        cells[cell] = (color, obj[1])
        text = t.format(obj=name, color=color)
    elif type == "shape":
        if shape == obj[1]:
            raise ValueError(f"the object is already a {shape}")
        cells[cell] = (obj[0], shape)
        text = t.format(obj=name, shape=shape)
    else:
        raise ValueError(f"unknown edit type {type!r}")
    return Edit(type, text, scene, Scene(scene.bg, tuple(cells)), (cell,))


def random_edit(rng, split="train", type=None, phrasing=None):
    """A random valid edit. split 'train': no held-out combo in reference or target, no held-out
    phrasing; 'heldout': a held-out combo in the reference or target (any phrasing);
    'all': anything. phrasing: a fixed template index. Removal needs two objects and addition one, so scenes keep 1-2 objects."""
    type = type or rng.choice(EDIT_TYPES)
    n_phr = len(PHRASINGS[type]) - (1 if split == "train" else 0)
    while True:
        n = 2 if type == "remove" else 1 if type == "add" else None
        ref = random_scene(rng, "all" if split == "heldout" else split, n)
        occupied = [i for i, _ in ref.objects()]
        empty = [i for i in range(4) if i not in occupied]
        kw = dict(phrasing=rng.randrange(n_phr) if phrasing is None else phrasing)
        if type == "background":
            kw["bg"] = rng.choice([b for b in BACKGROUNDS if b != ref.bg])
        elif type == "add":
            kw.update(cell=rng.choice(empty), color=rng.choice(list(COLORS)),
                      shape=rng.choice(SHAPES))
        elif type != "none":
            kw["cell"] = rng.choice(occupied)
            obj = ref.cells[kw["cell"]]
            if type == "color":
                kw["color"] = rng.choice([c for c in COLORS if c != obj[0]])
            if type == "shape":
                kw["shape"] = rng.choice([s for s in SHAPES if s != obj[1]])
        edit = apply_edit(ref, type, **kw)
        if split == "all" or has_heldout_combo(edit) == (split == "heldout"):
            return edit


def has_heldout_combo(edit):
    """Does the reference or the target hold a colour x shape combination of HELDOUT_COMBOS?"""
    return any(o in HELDOUT_COMBOS for s in (edit.reference, edit.target) for _, o in s.objects())


def eval_edits(n=500, seed=1234, split="all"):
    """A fixed, seeded evaluation set covering all five edit types equally (held-out phrasings and
    combinations included when split is 'all')."""
    rng = random.Random(seed)
    return [random_edit(rng, split, EDIT_TYPES[k % len(EDIT_TYPES)]) for k in range(n)]


# ----------------------------------------------------------------------------- oracle

_PALETTE_NAMES = list(BACKGROUNDS) + list(COLORS)
_PALETTE = np.array([*BACKGROUNDS.values(), *COLORS.values()], dtype=np.float32)  # (8, 3)
_NB = len(BACKGROUNDS)


@lru_cache(maxsize=None)
def _template(shape, box):
    img = Image.new("L", (CELL, CELL), 0)
    _draw(ImageDraw.Draw(img), shape, box, 255)
    return np.asarray(img) > 0


def parse(image, min_pixels=24, min_iou=0.75, min_purity=0.8):
    """Read any 32x32 RGB image (PIL or uint8 array) into a Scene. Each pixel goes to its nearest
    palette colour; the background is the most common background colour; a cell is empty when
    it has fewer than min_pixels object pixels; otherwise its colour is the majority object colour
    (UNRECOGNISED if that is under min_purity of the object pixels) and its shape is the template
    (circle, square, triangle) drawn into the colour mask's bounding box that has the highest IoU
    with it (UNRECOGNISED if under min_iou)."""
    arr = np.asarray(image, dtype=np.float32)
    assert arr.shape == (SIZE, SIZE, 3), f"parse wants a 32x32 RGB image, got {arr.shape}"
    label = ((arr[:, :, None, :] - _PALETTE) ** 2).sum(-1).argmin(-1)  # (32, 32)
    bg = int(np.bincount(label[label < _NB].ravel(), minlength=_NB).argmax()) \
        if (label < _NB).any() else 0
    cells = []
    for x, y in CELL_XY:
        lab = label[y:y + CELL, x:x + CELL]
        obj = lab >= _NB
        if obj.sum() < min_pixels:
            cells.append(None)
            continue
        counts = np.bincount(lab[obj] - _NB, minlength=len(COLORS))
        k = int(counts.argmax())
        if counts[k] < min_purity * obj.sum():
            cells.append(UNRECOGNISED)
            continue
        mask = lab == _NB + k
        ys, xs = np.nonzero(mask)
        box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
        ious = []
        for s in SHAPES:
            t = _template(s, box)
            ious.append((t & mask).sum() / max((t | mask).sum(), 1))
        j = int(np.argmax(ious))
        cells.append((list(COLORS)[k], SHAPES[j]) if ious[j] >= min_iou else UNRECOGNISED)
    return Scene(_PALETTE_NAMES[bg], tuple(cells))


def is_realistic(image, parsed=None, max_err=0.04):
    """Realism: the image parses with no unrecognised cell and lies within max_err (mean absolute
    error, in [0, 1] units) of a rendering of its own parse. Calibration: 256 samples of the
    shipped prior have errors of median 0.006, max 0.015 (python pretrain.py prior, at the end)."""
    parsed = parsed or parse(image)
    if UNRECOGNISED in parsed.cells:
        return False
    err = np.abs(np.asarray(image, np.float32) - np.asarray(render(parsed), np.float32)).mean()
    return bool(err / 255.0 <= max_err)


def score_edit(edit, image):
    """Oracle score of one edited image (PIL or uint8 array):
    success = parse(image) equals the target scene exactly;
    preservation = fraction of scene elements (background, 4 cells) the instruction does not
    touch that still equal the reference; realism = is_realistic(image)."""
    p = parse(image)
    keep = [e for e in ("bg", 0, 1, 2, 3) if e not in edit.touched]
    same = [(p.bg == edit.reference.bg) if e == "bg" else (p.cells[e] == edit.reference.cells[e])
            for e in keep]
    return {"success": float(p == edit.target), "preservation": float(np.mean(same)),
            "realism": float(is_realistic(image, p))}


def summarize(edits, images):
    """Mean oracle scores overall, by edit type, and on held-out combinations."""
    rows = [(e, score_edit(e, im)) for e, im in zip(edits, images)]

    def mean(rs):
        return {k: float(np.mean([s[k] for _, s in rs])) if rs else float("nan")
                for k in ("success", "preservation", "realism")}
    return {"overall": mean(rows),
            "by_type": {t: mean([r for r in rows if r[0].type == t])
                        for t in dict.fromkeys(e.type for e in edits)},
            "heldout_combos": mean([r for r in rows if has_heldout_combo(r[0])]),
            "n": len(rows)}


def evaluate(edit_fn, edits, batch=100):
    """Run edit_fn(list of reference PIL images, list of instructions) -> uint8 (B, 32, 32, 3)
    over edits in batches; returns (summarize(...), edited images)."""
    images = []
    for k in range(0, len(edits), batch):
        chunk = edits[k:k + batch]
        images.extend(edit_fn([render(e.reference) for e in chunk], [e.instruction for e in chunk]))
    return summarize(edits, images), images


def grid(rows, scale=3, pad=2, captions=None, names=None):
    """rows: lists of same-size square images (PIL or uint8 arrays) -> one PIL image, a row per
    list, enlarged scale times (nearest). captions: a text under each column (e.g. its
    instruction, wrapped); names: a label left of each row."""
    rows = [[im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im)) for im in r]
            for r in rows]
    s, w = rows[0][0].width, max(len(r) for r in rows)
    out = Image.new("RGB", (w * (s + pad) + pad, len(rows) * (s + pad) + pad), (200,) * 3)
    for i, r in enumerate(rows):
        for j, im in enumerate(r):
            out.paste(im, (pad + j * (s + pad), pad + i * (s + pad)))
    out = out.resize((out.width * scale, out.height * scale), Image.NEAREST)
    if not captions and not names:
        return out
    import textwrap
    font, cw = ImageFont.load_default(size=11), (s + pad) * scale
    wrapped = [textwrap.wrap(c, max(8, cw // 7)) for c in captions or []]
    left = max((font.getbbox(n)[2] for n in names or []), default=0) + (8 if names else 0)
    tall = 13 * max((len(t) for t in wrapped), default=0) + 6
    page = Image.new("RGB", (left + out.width, out.height + tall), "white")
    page.paste(out, (left, 0))
    draw = ImageDraw.Draw(page)
    for i, n in enumerate(names or []):
        draw.text((2, (pad + i * (s + pad)) * scale + s * scale // 2 - 6), n, "black", font)
    for j, lines in enumerate(wrapped):
        for k, line in enumerate(lines):
            draw.text((left + pad * scale + j * cw, out.height + 3 + 13 * k), line, "black", font)
    return page


if __name__ == "__main__":
    rng = random.Random(0)
    edits = [random_edit(rng, "all", EDIT_TYPES[k % 5]) for k in range(16)]
    for e in edits:
        print(f"{e.type:10s} {e.instruction:45s} | {e.caption} -> {e.edited_caption}")
    grid([[render(e.reference) for e in edits], [render(e.target) for e in edits]]).save(
        "toyworld_examples.png")
