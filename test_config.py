"""config.py: presets, --key=value overrides, and a one-line error for every bad value:
python -m pytest -q test_config.py"""
import pytest

import toyworld as tw
import train
from config import cfg_scales, parse_args, vlm_weights


def test_overrides_are_type_checked():
    with pytest.raises(SystemExit, match="unknown config key 'nope'"):
        parse_args(["--config", "tiny", "--nope=1"])
    with pytest.raises(SystemExit, match="wants a int"):
        parse_args(["--config", "tiny", "--max_steps=abc"])
    with pytest.raises(SystemExit, match="unknown config 'huge'"):
        parse_args(["--config", "huge"])
    with pytest.raises(SystemExit, match="--warmup_prompt must be caption or instruction"):
        parse_args(["--config", "tiny", "--warmup_prompt=target"])
    name, cfg = parse_args(["--config=tiny", "--lr=0.5", "--full_vocab=true"])
    assert name == "tiny" and cfg.lr == 0.5 and cfg.full_vocab is True


def test_cfg_by_type_sets_the_real_score_scale_per_sample():
    _, cfg = parse_args(["--config", "tiny", "--cfg=3", "--cfg_by_type=add=8,color=5"])
    assert cfg_scales(cfg, ["add", "shape", "color"]) == [8.0, 3.0, 5.0]
    with pytest.raises(SystemExit, match="TYPE=VALUE"):
        parse_args(["--config", "tiny", "--cfg_by_type=add8"])
    with pytest.raises(SystemExit, match="unknown edit type 'adds'"):
        parse_args(["--config", "tiny", "--cfg_by_type=adds=8"])


def test_vlm_by_type_weights_the_judge_loss_per_sample():
    _, cfg = parse_args(["--config", "tiny", "--vlm_by_type=color=2", "--vlm_by_type_from=0"])
    assert vlm_weights(cfg, ["add", "color", "remove"]) == [1.0, 2.0, 1.0]
    assert vlm_weights(parse_args(["--config", "tiny", "--vlm_by_type="])[1], ["add"]) is None
    _, cfg = parse_args(["--config", "tiny", "--vlm_by_type=color=2", "--vlm_by_type_from=10"])
    assert vlm_weights(cfg, ["color"], 9) is None and vlm_weights(cfg, ["color"], 10) == [2.0]
    with pytest.raises(SystemExit, match="unknown edit type 'colour'"):
        parse_args(["--config", "tiny", "--vlm_by_type=colour=2"])
    # as shipped: the small preset weighs recolours 6x and removals 2x from step 1,000 on;
    # the real presets weigh every type alike (docs/method.md, "Hyperparameters")
    small = parse_args(["--config", "small"])[1]
    assert vlm_weights(small, ["color", "remove", "add"], 999) is None
    assert vlm_weights(small, ["color", "remove", "add"], 1000) == [6.0, 2.0, 1.0]
    for name in ("base", "large"):
        assert vlm_weights(parse_args(["--config", name])[1], ["color"], 10**6) is None


def test_type_mix_weights_the_training_edit_types():
    """--type_mix=add=1,color=0,...: every training edit is an addition (or "none"); the default
    mix draws all five types; bad specs are clear errors."""
    import random
    only_add = "add=1,color=0,remove=0,shape=0,background=0"
    for mix, want in ((only_add, {"add"}), ("", set(tw.EDIT_TYPES))):
        _, cfg = parse_args(["--config", "tiny", f"--type_mix={mix}", "--p_nothing=0"])
        b = train.make_batches(cfg, random.Random(0), "cpu")(200)
        assert set(b.types) == want
    with pytest.raises(SystemExit, match="unknown edit type 'adds'"):
        parse_args(["--config", "tiny", "--type_mix=adds=2"])
    for bad in ("add=-1", "add=0,color=0,remove=0,shape=0,background=0"):
        with pytest.raises(SystemExit, match=">= 0, not all 0"):
            parse_args(["--config", "tiny", f"--type_mix={bad}"])


@pytest.mark.parametrize("arg,allowed", [
    ("--batch_size=0", "an integer >= 1"),          # a count that must be >= 1
    ("--max_steps=-5", "an integer >= 0"),          # a count that may be 0 (warm-up only)
    ("--lr=nan", "a finite number"),                # any float: finite
    ("--lr=0", "a finite number > 0"),              # a rate
    ("--fake_lr=inf", "a finite number"),
    ("--w_vlm=-1", "a finite number >= 0"),         # a weight
    ("--p_nothing=1.5", "a number in [0, 1]"),      # a probability
    ("--ema=-0.1", "a number in [0, 1]"),
    ("--beta2=1", "a number in [0, 1)"),            # Adam's beta
])
def test_every_numeric_option_is_range_checked_with_a_one_line_error(arg, allowed):
    with pytest.raises(SystemExit) as e:
        parse_args(["--config", "small", arg])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"error: {arg.split('=')[0]} must be") and \
        allowed in msg, msg


def test_every_numeric_option_has_a_range():
    from dataclasses import fields

    from config import RANGES, Config
    numeric = {f.name for f in fields(Config) if f.type in ("int", "float", int, float)}
    assert numeric == set(RANGES), numeric ^ set(RANGES)
    for name in ("tiny", "small", "base", "large"):  # every preset passes its own checks
        parse_args(["--config", name])
