"""The small world's language (toytext.py): a grammar with held-out parts, captions that state
only what is true, and a tokenizer that covers it all:  python -m pytest -q test_toytext.py"""
import collections
import random
import re

import toytext as tt
import toyworld as tw

TYPES = tw.EDIT_TYPES + ("none",)


def test_captions_state_only_what_is_true_and_never_an_absence():
    rng = random.Random(0)
    for k in range(3000):
        e = tt.random_edit(rng, "all", TYPES[k % 6])
        cy, cx = tt.read_caption(e.caption), tt.read_caption(e.edited_caption)
        assert tt.consistent(cy, e.reference) and tt.consistent(cx, e.target), e
        assert cy.text == e.caption and not {"no", "empty", "nothing"} & set(e.caption.split())
        if e.type == "remove":  # a removed object is simply not mentioned
            gone = e.reference.cells[e.touched[0]]
            assert all((c, s, cell) != (*gone, e.touched[0]) for c, s, cell, _ in cx.items)
        if e.type in ("color", "shape", "add"):  # the edited content is always stated
            new = e.target.cells[e.touched[0]]
            assert any((c, s) == new for c, s, _, _ in cx.items), (e.instruction, cx)


def test_complete_captions_determine_the_scene():
    rng = random.Random(1)
    for _ in range(2000):
        s = tw.random_scene(rng)
        cap = tt.caption(rng, s)
        if cap.complete:  # every object with its place: no other scene fits
            other = tw.Scene(s.bg, tuple(c or ("red", "circle") for c in s.cells))
            assert other == s or not tt.consistent(cap, other)
        assert tt.read_caption(cap.text) == cap


def test_consistency_known_answers():
    s = tw.Scene("white", (("red", "circle"), None, None, ("blue", "square")))
    cap = lambda text: tt.read_caption(text)  # noqa: E731
    assert tt.consistent(cap("a red circle on a white background"), s)  # omits the square
    assert tt.consistent(cap("a white background with a red circle and a blue square at lower right"), s)
    assert not tt.consistent(cap("a blue square at the top left on a white background"), s)
    assert not tt.consistent(cap("two red circles on a white background"), s)
    assert not tt.consistent(cap("a red circle on a black background"), s)
    complete = cap("a red circle at the top left on a white background")
    assert complete.complete and not tt.consistent(complete, s)  # the square is not allowed


def _pattern(template):
    """A core or wrapper template as a regex: every {slot} matches any words."""
    parts = re.split(r"\{\w+\}", template.lstrip(tt.HELD))
    return ".+".join(re.escape(p) for p in parts)


def test_grammar_has_dozens_of_forms_per_type_and_holds_out_its_marked_parts():
    rng = random.Random(2)
    forms = collections.defaultdict(set)
    for k in range(6000):
        e = tt.random_edit(rng, "train", TYPES[k % 6])
        assert not e.heldout_grammar and not e.instruction.startswith("can you please "), e
        skeleton = e.instruction
        for w in [*tw.COLORS, *tw.SHAPES, *tw.BACKGROUNDS]:
            skeleton = skeleton.replace(w, "X")
        forms[e.type].add(skeleton)
    assert min(len(forms[t]) for t in tw.EDIT_TYPES) >= 36, {t: len(v) for t, v in forms.items()}
    for k in range(200):  # every held-out instruction uses a held-out core or the held wrapper
        e = tt.random_edit(rng, "heldout_grammar", tw.EDIT_TYPES[k % 5])
        held = [_pattern(c) for c in tt.CORES[e.type] if c.startswith(tt.HELD)]
        assert e.heldout_grammar and (e.instruction.startswith("can you please ") or any(
            re.search(p, e.instruction) for p in held)), e.instruction


def test_referring_expressions_pick_a_unique_object():
    rng = random.Random(3)
    s = tw.Scene("gray", (("red", "circle"), ("red", "square"), None, None))
    for _ in range(200):
        ref = tt.refer(rng, s, 0)
        assert ref not in ("the red one", "the red object", "it"), ref  # red is not unique
        assert ref != "the square"


def test_tokenizer_covers_every_instruction_and_caption():
    tok = tt.build_tokenizer()
    rng = random.Random(4)
    for k in range(1000):
        e = tt.random_edit(rng, "all", TYPES[k % 6])
        for text in (e.instruction, e.caption, e.edited_caption):
            assert tok.unk_token_id not in tok(text).input_ids, text


def test_copy_consistent_edits_are_the_removals_mostly():
    """The edits DMD alone cannot tell from a copy (c_x true of the reference): many removals,
    no background edit (c_x states the new background)."""
    edits = tt.eval_edits(500)
    share = {t: sum(tt.copy_consistent(e) for e in edits if e.type == t) / 100
             for t in tw.EDIT_TYPES}
    assert share["remove"] >= 0.3 and share["background"] == 0.0, share
