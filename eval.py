"""Evaluate a trained editor.

    python eval.py --ckpt out/small            # small world: the oracle table on a fixed eval set

(a) Small world: over the fixed, seeded eval set (toyworld.eval_edits: 500 edits, all five types,
held-out phrasings and colour x shape combinations included) the oracle's success, preservation
and realism per edit type, the held-out combinations separately; writes <ckpt>/eval/metrics.json
and a before/after grid (rows: input, edited, oracle target).
(b) Real images, the GEdit-Bench / VIEScore protocol: not built yet (issue 5).
"""
import argparse
import json
import os
import sys


def table(metrics):
    """The oracle metrics as a markdown table."""
    rows = [("overall", metrics["overall"]), *metrics["by_type"].items(),
            ("held-out combos", metrics["heldout_combos"])]
    if "warmup_only" in metrics:
        rows.append(("warm-up only (overall)", metrics["warmup_only"]))
    out = ["| edits | success | preservation | realism |", "|---|---|---|---|"]
    out += [f"| {k} | {m['success']:.3f} | {m['preservation']:.3f} | {m['realism']:.3f} |"
            for k, m in rows]
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ckpt", default="out/small", help="a training run's out_dir or ckpt folder")
    p.add_argument("--n", type=int, default=500, help="eval set size")
    p.add_argument("--seed", type=int, default=1234, help="eval set seed")
    p.add_argument("--out", default=None, help="output folder (default <ckpt>/eval)")
    a = p.parse_args(argv)
    import torch
    import toyworld as tw
    from train import editor_fn, load_editor
    try:
        generator, cfg = load_editor(a.ckpt)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    out = a.out or os.path.join(a.ckpt, "eval")
    os.makedirs(out, exist_ok=True)
    edits = tw.eval_edits(a.n, seed=a.seed)
    with torch.no_grad():
        metrics, images = tw.evaluate(editor_fn(generator, "cpu", cfg.shift), edits)
    json.dump(metrics, open(f"{out}/metrics.json", "w"), indent=1)
    tw.grid([[tw.render(e.reference) for e in edits[:20]], images[:20],
             [tw.render(e.target) for e in edits[:20]]]).save(f"{out}/grid.png")
    print(table(metrics))
    print(f"wrote {out}/metrics.json and {out}/grid.png (rows: input, edited, oracle target)")


if __name__ == "__main__":
    main()
