"""The small world's language: instructions as people type them, captions as a captioner writes
them, and the word-level tokenizer that covers both.

Instructions come from a grammar per edit type: a core sentence (many verbs and sentence forms:
imperatives, "i want ...", "... should be ...", fronted locations "at the top right , add ...",
"replace X with Y"), an optional politeness wrapper ("can you ... please"), and a referring
expression that picks the object by whatever is unique in the scene ("the circle", "the red one",
"the object at the top left", "the green square at the bottom left", "it").

Held out of every training stream (the editor's and the judge's), for evaluation only: the cores
marked HELD below (two per edit type, made of words that training uses elsewhere, in new
combinations) and the wrapper "can you please {x}". A held-out instruction uses at least one
of them.

Captions (c_y of the reference, c_x of the edit) read like a captioner's: objects by colour and
shape, in reading order, each with its position only sometimes, the background always; never an
absence ("no", "empty"); an object is sometimes left out. Two styles:
  detailed (p 0.3): every object, each with its position. Such a caption determines the scene,
           and only such a caption names every object with a position;
  brief:   each object kept with p 0.8 and positioned with p 0.35.
c_x is written from the instruction: the edited content is always stated (an added object with
its position, a recoloured or reshaped object with its new look, a new background), the other
objects as a brief caption would, and a removed object is simply not mentioned. So the unedited
reference is often still consistent with c_x (always for removals): DMD alone cannot tell those
edits from a copy, and the judge's questions must (docs/method.md, "Loss 1").

    python toytext.py     # prints edits of every type, with their captions
"""
import random
import re
from dataclasses import dataclass, replace

import toyworld as tw

HELD = "*"  # a core marked HELD is held out for evaluation
CORES = {  # {ref}: the object, {c} colour, {s} shape, {c0}/{s0}: the object's own, {at}: a place
    "color": ["make {ref} {c}", "change {ref} to {c}", "paint {ref} {c}", "color {ref} {c}",
              "change the color of {ref} to {c}", "replace {ref} with a {c} {s0}",
              "recolor {ref} {c}", "i want {ref} to be {c}", "{ref} should be {c}",
              HELD + "turn {ref} {c}", HELD + "give {ref} a {c} color"],
    "remove": ["remove {ref}", "delete {ref}", "erase {ref}", "take away {ref}",
               "get rid of {ref}", "i want {ref} gone", "clear the {cw} corner",
               HELD + "take {ref} away", HELD + "{ref} should be gone"],
    "add": ["add a {c} {s} {at}", "put a {c} {s} {at}", "draw a {c} {s} {at}",
            "place a {c} {s} {at}", "insert a {c} {s} {at}", "{at} , add a {c} {s}",
            "{at} , draw a {c} {s}", "i want a {c} {s} {at}", "there should be a {c} {s} {at}",
            HELD + "{at} , put a {c} {s}", HELD + "add one {c} {s} {at}"],
    "shape": ["make {ref} a {s}", "turn {ref} into a {s}", "change {ref} into a {s}",
              "reshape {ref} into a {s}", "replace {ref} with a {c0} {s}",
              "i want {ref} to be a {s}", "{ref} should be a {s}",
              HELD + "change {ref} to a {s}", HELD + "make {ref} into a {s}"],
    "background": ["make the background {bg}", "change the background to {bg}",
                   "set the background to {bg}", "paint the background {bg}",
                   "use a {bg} background", "i want a {bg} background",
                   "the background should be {bg}", "give it a {bg} background",
                   HELD + "turn the background {bg}", HELD + "change the background color to {bg}"],
    "none": ["do nothing", "keep the image unchanged", "leave the image as it is",
             "change nothing", "leave it alone"],
}
WRAPPERS = ["{x}", "{x}", "{x}", "please {x}", "{x} please", "can you {x}", "can you {x} please",
            "i want you to {x}", "{x} .", HELD + "can you please {x}"]
STATEMENT = ("i want", "there should", "{ref} should", "the background should", "{at} ,")  # no wrapper
PLACES = ["at the {cell}", "at {cell}", "in the {cell}", "in the {cell} corner"]
CELL_WORDS = {"top left": ["top left", "upper left"], "top right": ["top right", "upper right"],
              "bottom left": ["bottom left", "lower left"],
              "bottom right": ["bottom right", "lower right"]}


def _held(t):
    return t.startswith(HELD)


def place(rng, cell):
    """'at the top left', 'in the upper left corner', ... for cell index `cell`."""
    return rng.choice(PLACES).format(cell=rng.choice(CELL_WORDS[tw.CELLS[cell]]))


def refer(rng, scene, i):
    """A referring expression for the object in cell i, using only what is unique in the scene."""
    (c, s), others = scene.cells[i], [o for j, o in scene.objects() if j != i]
    forms = [f"the {c} {s} " + place(rng, i), "the object " + place(rng, i),
             "the one " + place(rng, i)]
    if (c, s) not in others:
        forms += [f"the {c} {s}"] * 3
    if s not in {o[1] for o in others}:
        forms += [f"the {s}"] * 2
    if c not in {o[0] for o in others}:
        forms += [f"the {c} one", f"the {c} object"]
    if not others:
        forms.append("it")
    return rng.choice(forms)


def instruction(rng, edit, split="train"):
    """A sentence asking for edit (a toyworld.Edit). split 'train': trained grammar only;
    'heldout': at least one held-out part (core or wrapper); 'all': anything.
    -> (instruction, the removed object's expression or None, whether a held-out part is used)."""
    while True:
        core, wrap = rng.choice(CORES[edit.type]), rng.choice(WRAPPERS)
        held = _held(core) or (_held(wrap) and not core.lstrip(HELD).startswith(STATEMENT))
        if split == "all" or held == (split == "heldout"):
            break
    core, wrap = core.lstrip(HELD), wrap.lstrip(HELD)
    cell = next((e for e in edit.touched if e != "bg"), None)
    obj = edit.reference.cells[cell] if cell is not None else None
    ref = refer(rng, edit.reference, cell) if obj else None
    new = edit.target.cells[cell] if cell is not None else None
    cw = rng.choice(CELL_WORDS[tw.CELLS[cell]]) if cell is not None else ""
    text = core.format(ref=ref, at=place(rng, cell) if cell is not None else "", cw=cw,
                       c=new[0] if new else "", s=new[1] if new else "",
                       c0=obj[0] if obj else "", s0=obj[1] if obj else "", bg=edit.target.bg)
    if not core.startswith(STATEMENT):
        text = wrap.format(x=text)
    return text, (ref if edit.type == "remove" else None), held


# ----------------------------------------------------------------------------- captions

@dataclass(frozen=True)
class Caption:
    """What a caption states: the background and items (colour, shape, cell index or None,
    count); complete: every object named with its position (the scene is determined)."""
    text: str
    bg: str
    items: tuple
    complete: bool


def _say(rng, items, bg):
    words = []
    for c, s, cell, n in items:
        w = f"a {c} {s}" if n == 1 else f"two {c} {s}s"
        words.append(w + (" " + place(rng, cell) if cell is not None else ""))
    things = " and ".join(words)
    if not things:
        return f"a {bg} background"
    return rng.choice([f"{things} on a {bg} background", f"{things} against a {bg} background",
                       f"a {bg} background with {things}"])


def caption(rng, scene, must=(), where=(), never=(), detailed=None):
    """A captioner's caption of scene -> Caption. must: cells always named (the edited content
    of c_x), where: with their position; never: cells never named (a removed object)."""
    detailed = rng.random() < 0.3 if detailed is None else detailed
    cells = [i for i, _ in scene.objects() if i not in never]
    if detailed:
        keep, pos = cells, set(cells)
    else:
        keep = [i for i in cells if i in must or rng.random() < 0.8]
        pos = {i for i in keep if i in where or (i not in must and rng.random() < 0.35)}
        left_out = len(keep) < len(scene.objects())
        if keep and pos == set(keep) and left_out:  # would read as complete: it is not
            free = [i for i in keep if i not in where]
            if free:
                pos.discard(rng.choice(free))
            elif not never:
                keep, pos = cells, set(cells)  # name everything: complete after all
    items, loose = [], [scene.cells[i] for i in keep if i not in pos]
    for i in keep:  # reading order; two identical unpositioned objects: "two red circles"
        if i in pos:
            items.append((*scene.cells[i], i, 1))
        elif scene.cells[i] in loose:
            items.append((*scene.cells[i], None, loose.count(scene.cells[i])))
            loose = [o for o in loose if o != scene.cells[i]]
    complete = len(keep) == len(scene.objects()) and pos == set(keep)
    return Caption(_say(rng, items, scene.bg), scene.bg, tuple(items), complete)


def consistent(cap, scene):
    """Is everything cap states true of scene? Positioned items must sit in their cell, the rest
    match distinct other objects; objects cap does not name are allowed (captions never state
    absence), unless cap is complete."""
    if cap.bg != scene.bg:
        return False
    free = dict(scene.objects())
    for c, s, cell, n in cap.items:
        if cell is not None:
            if free.pop(cell, None) != (c, s):
                return False
    need = [(c, s) for c, s, cell, n in cap.items if cell is None for _ in range(n)]
    pool = list(free.values())
    for o in need:
        if o not in pool:
            return False
        pool.remove(o)
    return not (cap.complete and pool)


# ----------------------------------------------------------------------------- edits

def write(rng, edit, split="train"):
    """Edit (a scene operation of toyworld) -> the same edit in words: instruction c, caption c_y
    of the reference, edited caption c_x, the removed object's expression."""
    text, obj, held = instruction(rng, edit, split)
    cell = [e for e in edit.touched if e != "bg"]
    must = cell if edit.type in ("color", "shape", "add") else ()
    placed = any(w in text for ws in CELL_WORDS.values() for w in ws)  # c_x says where, if c did
    never = cell if edit.type == "remove" else ()
    return replace(edit, instruction=text, object=obj, heldout_grammar=held,
                   caption=caption(rng, edit.reference).text,
                   edited_caption=caption(rng, edit.target, must, must if placed else (),
                                          never).text)


def random_edit(rng, split="train", type=None):
    """A random edit in words. split 'train': no held-out colour x shape combination and only the
    trained grammar (the editor's training); 'pretrain': every combination, trained grammar (the
    prior's and the judge's pretraining); 'heldout_grammar': trained combinations, held-out
    grammar; 'heldout_combo': a held-out combination, trained grammar; 'all': anything."""
    combo = {"train": "train", "heldout_grammar": "train", "heldout_combo": "heldout"}.get(split, "all")
    grammar = {"heldout_grammar": "heldout", "all": "all"}.get(split, "train")
    return write(rng, tw.random_edit(rng, combo, type), grammar)


def eval_edits(n=500, seed=1234):
    """The fixed, seeded evaluation set: the five edit types in turn; of every four rounds one in
    the held-out grammar, one with a held-out colour x shape combination, two in neither."""
    rng = random.Random(seed)
    splits = ("heldout_grammar", "heldout_combo", "train", "train")
    return [random_edit(rng, splits[(k // len(tw.EDIT_TYPES)) % 4], tw.EDIT_TYPES[k % 5])
            for k in range(n)]


def read_caption(text):
    """A caption's text -> Caption (the inverse of _say). Complete: every named object has its
    place, which only a complete caption does (caption())."""
    m = re.fullmatch(r"a (\w+) background(?: with (.*))?|(.*) (?:on|against) a (\w+) background",
                     text)
    if not m:
        raise ValueError(f"not a caption of this world: {text!r}")
    bg, things = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
    items = []
    for part in (things.split(" and ") if things else []):
        w = part.split()
        n, c, s = (2, w[1], w[2][:-1]) if w[0] == "two" else (1, w[1], w[2])
        names = [k for k, ws in CELL_WORDS.items() if any(x in part for x in ws)]
        items.append((c, s, tw.CELLS.index(names[0]) if names else None, n))
    return Caption(text, bg, tuple(items), bool(items) and all(i[2] is not None for i in items))


def copy_consistent(edit):
    """Is the unedited reference still consistent with c_x? DMD alone cannot tell such an edit
    from a copy: only the judge's questions can."""
    return consistent(read_caption(edit.edited_caption), edit.reference)


def matches(expression, scene):
    """Does scene hold an object that fits a referring expression ("the red one", "the object at
    the top left", "the blue square in the lower right corner")? What a question about the
    expression literally asks, read off its colour, shape and place words."""
    words = expression.split()
    colour = next((c for c in tw.COLORS if c in words), None)
    shape = next((s for s in tw.SHAPES if s in words), None)
    cell = next((tw.CELLS.index(k) for k, ws in CELL_WORDS.items() if any(w in expression for w in ws)), None)
    return any((colour is None or o[0] == colour) and (shape is None or o[1] == shape) and
               (cell is None or i == cell) for i, o in scene.objects())


def vocabulary():
    """Every word instructions, captions and the prior's structured prompts can contain."""
    words = set(". , ? a at and on the with two against background empty cell".split())
    for v in [*tw.BACKGROUNDS, *tw.COLORS, *tw.SHAPES, *(s + "s" for s in tw.SHAPES),
              *(w for ws in CELL_WORDS.values() for w in ws), *PLACES, *WRAPPERS,
              *(t for ts in CORES.values() for t in ts), "object one it"]:
        words.update(w for w in v.lstrip(HELD).split() if "{" not in w)
    return sorted(words)


def build_tokenizer(extra_words=(), extra_special=()):
    """A word-level tokenizer of this world (vocabulary() plus extra_words), lower-casing its
    input, built locally and wrapped as a transformers fast tokenizer (save it with
    save_pretrained; load it back with AutoTokenizer)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *extra_special]
    words = special + vocabulary()
    words += sorted(set(extra_words) - set(words))
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A", special_tokens=[("[CLS]", vocab["[CLS]"])])
    tok.add_special_tokens(special)  # matched whole, before splitting on punctuation
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]",
                                   model_max_length=256 if extra_special else 48)


if __name__ == "__main__":
    rng = random.Random(0)
    for k in range(18):
        e = random_edit(rng, ("train", "heldout_grammar")[k % 2], (tw.EDIT_TYPES + ("none",))[k % 6])
        print(f"{e.type:10s} {e.instruction:50s} | {e.caption} -> {e.edited_caption}")
