"""Tests of the small world and its oracle:  python -m pytest -q test_toyworld.py"""
import random

import numpy as np
import pytest

import toyworld as tw


def test_oracle_round_trip_10000_scenes():
    rng = random.Random(0)
    for _ in range(10_000):
        s = tw.random_scene(rng)
        assert tw.parse(tw.render(s)) == s


def test_every_edit_touches_exactly_what_it_changes():
    rng = random.Random(1)
    for k in range(2000):
        e = tw.random_edit(rng, "all", (tw.EDIT_TYPES + ("none",))[k % 6])
        assert (e.type == "none") == (e.target == e.reference)
        changed = {x for x in ("bg", 0, 1, 2, 3)
                   if (e.target.bg != e.reference.bg if x == "bg"
                       else e.target.cells[x] != e.reference.cells[x])}
        assert changed == set(e.touched)


def test_impossible_edits_raise_value_error():
    s = tw.Scene("white", (("red", "circle"), None, None, None))
    with pytest.raises(ValueError, match="empty"):
        tw.apply_edit(s, "remove", cell=1)
    with pytest.raises(ValueError, match="empty"):
        tw.apply_edit(s, "color", cell=2, color="blue")
    with pytest.raises(ValueError, match="occupied"):
        tw.apply_edit(s, "add", cell=0, color="blue", shape="square")
    full = tw.Scene("white", (("red", "circle"),) * 4)
    with pytest.raises(ValueError, match="full"):
        tw.apply_edit(full, "add", cell=0, color="blue", shape="square")
    with pytest.raises(ValueError, match="already"):
        tw.apply_edit(s, "background", bg="white")


def test_train_split_never_shows_heldout_combos():
    rng = random.Random(2)
    for _ in range(2000):
        e = tw.random_edit(rng, "train")
        assert not tw.has_heldout_combo(e)
    assert tw.has_heldout_combo(tw.random_edit(random.Random(3), "heldout"))


def test_oracle_scores_edits():
    e = tw.apply_edit(tw.Scene("gray", (("red", "circle"), ("blue", "square"), None, None)),
                      "color", cell=0, color="green")
    assert tw.score_edit(e, tw.render(e.target)) == \
        {"success": 1.0, "preservation": 1.0, "realism": 1.0}
    # copying the input: no success, everything untouched preserved
    assert tw.score_edit(e, tw.render(e.reference))["success"] == 0.0
    assert tw.score_edit(e, tw.render(e.reference))["preservation"] == 1.0
    # noise: unrealistic, and the parse fails
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    s = tw.score_edit(e, noise)
    assert s["realism"] == 0.0 and s["success"] == 0.0
    # the right scene under heavy pixel noise: parsed right, but not realistic
    noisy = np.asarray(tw.render(e.target), np.float32)
    noisy = np.clip(noisy + np.random.default_rng(1).normal(0, 25, noisy.shape), 0, 255)
    s = tw.score_edit(e, noisy.astype(np.uint8))
    assert s["success"] == 1.0 and s["realism"] == 0.0
