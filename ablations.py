"""The paper's comparisons, reproduced in the small world with its exact oracle, in one command.

    python ablations.py --jobs=2 --threads=1   # every row, two runs at once on 2 cores; 3 seeds
                                               # for NP-Edit, DMD only, SFT, full-vocab CE
    python ablations.py --rows npedit dmd_only --seeds 0 --max_steps=100   # a quick look

Every row starts from the same identity warm-up (trained once per seed, then copied), runs the
shipped `small` preset's budget (its steps and batch, unless overridden; `sft_wall`: 5.5x the
steps, NP-Edit's wall clock), and is scored on the same fixed eval set
(toytext.eval_edits). Each row is a flag of train.py, not a copy of it:
  npedit     NP-Edit, no pairs (the small preset's losses and weights)
  sft        supervised flow matching on true (reference, instruction) -> target pairs
  sft_wall   the same, 5.5x the steps (NP-Edit's wall clock)
  dmd_only   no VLM loss (w_vlm = 0)
  vlm_only   no DMD (w_dmd = 0)
  no_ident   no "is the rest unchanged?" question
  full_vocab full-vocabulary cross-entropy instead of the yes/no BCE
  grpo       Flow-GRPO with the same judge as a scalar reward (baselines.py), at four lrs
Writes out/ablations/results.md (markdown table, mean +- std over seeds, wall time per row) and
out/ablations/grid.png (one row per method on the same inputs), and prints the table.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from config import parse_args

ROWS = {
    "npedit": ("NP-Edit (no pairs)", []),
    "sft": ("SFT on true pairs", ["--method=sft"]),
    "dmd_only": ("DMD only (no VLM)", ["--w_vlm=0"]),
    "vlm_only": ("VLM only (no DMD)", ["--w_dmd=0"]),
    "no_ident": ("no identity question", ["--identity_question=false"]),
    "full_vocab": ("full-vocab CE", ["--full_vocab=true"]),
    "grpo": ("Flow-GRPO (judge as reward), lr 5e-4", ["--method=grpo"]),
    "grpo_lr1e-4": ("Flow-GRPO, lr 1e-4", ["--method=grpo", "--lr=1e-4"]),
    "grpo_lr2e-5": ("Flow-GRPO, lr 2e-5", ["--method=grpo", "--lr=2e-5"]),
    "grpo_lr5e-6": ("Flow-GRPO, lr 5e-6", ["--method=grpo", "--lr=5e-6"]),
    # an SFT step costs ~1/5.5 of an NP-Edit step (56-66 vs 329-334 ms at the small preset, two
    # 1-thread runs side by side), so this row gets 5.5x the steps: about NP-Edit's wall clock
    "sft_wall": ("SFT on true pairs, 5.5x steps (same wall clock)", ["--method=sft"]),
}
STEPS_TIMES = {"sft_wall": 5.5}  # rows that run a multiple of the shared max_steps
BUDGET = {"small": []}  # per config: flags every row gets (none: the preset as shipped)
MULTI_SEED = ("npedit", "dmd_only", "sft_wall", "full_vocab")


def train(out_dir, args, config="small"):
    """Run train.py; -> wall seconds. Output goes to <out_dir>.log."""
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    t = time.time()
    with open(out_dir + ".log", "w") as log:
        r = subprocess.run([sys.executable, "train.py", "--config", config,
                            f"--out_dir={out_dir}", *args], stdout=log, stderr=subprocess.STDOUT)
    if r.returncode:
        raise SystemExit(f"error: {out_dir} failed (exit {r.returncode}); see {out_dir}.log")
    return time.time() - t


def fmt(values):
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(results):
    """results: {row: [(metrics, wall seconds), ...]} -> markdown."""
    types = list(next(iter(results.values()))[0][0]["by_type"])
    out = ["| method | seeds | success | preservation | realism | " +
           " | ".join(f"{t} success" for t in types) + " | min/run |",
           "|---" * (6 + len(types)) + "|"]
    for row, runs in results.items():
        m = [r[0] for r in runs]
        cells = [fmt([x["overall"][k] for x in m]) for k in ("success", "preservation", "realism")]
        cells += [fmt([x["by_type"][t]["success"] for x in m]) for t in types]
        wall = statistics.mean(r[1] for r in runs) / 60
        out.append(f"| {ROWS[row][0]} | {len(runs)} | " + " | ".join(cells) + f" | {wall:.1f} |")
    return "\n".join(out)


def grid(results, root, n=12):
    """One row per method (its first seed) on the same eval inputs, each column captioned with its
    instruction; first rows: input, target."""
    import torch
    import toyworld as tw
    import model as M
    from checkpoint import load_editor
    import toytext as tt
    edits = tt.eval_edits(n, seed=7)
    refs = [tw.render(e.reference) for e in edits]
    rows = [refs, [tw.render(e.target) for e in edits]]
    for row in results:
        generator, cfg = load_editor(f"{root}/{row}_s{results[row][0][2]}")
        with torch.no_grad():
            rows.append(M.editor_fn(generator, "cpu", cfg.shift)(refs, [e.instruction for e in edits]))
    names = ["input", "target"] + [ROWS[row][0].split(" (")[0] for row in results]
    tw.grid(rows, captions=[e.instruction for e in edits], names=names).save(f"{root}/grid.png")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--root", default="out/ablations")
    p.add_argument("--config", default="small", help="the preset every row starts from")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (2 cores: --jobs=2 "
                   "--threads=1)")
    a, extra = p.parse_known_args(argv)  # any other --key=value goes to every run
    a.extra = BUDGET.get(a.config, []) + extra
    t0, results = time.time(), {}

    def warmup(seed):  # the shared warm-up, once per seed (max_steps=0: warm-up only)
        warm = f"{a.root}/warmup_s{seed}"
        if not os.path.exists(f"{warm}/warmup_metrics.json"):
            wall = train(warm, [f"--seed={seed}", "--max_steps=0", *a.extra], a.config)
            json.dump({"wall_s": wall}, open(f"{warm}/wall.json", "w"))

    def run(row, seed):
        out = f"{a.root}/{row}_s{seed}"
        if not os.path.exists(f"{out}/metrics.json"):
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(f"{a.root}/warmup_s{seed}/ckpt", f"{out}/ckpt")
            shutil.copy(f"{a.root}/warmup_s{seed}/warmup_metrics.json", out)
            args = [f"--seed={seed}", *ROWS[row][1], *a.extra]
            if row in STEPS_TIMES:
                _, cfg = parse_args(["--config", a.config, *args])
                args.append(f"--max_steps={int(STEPS_TIMES[row] * cfg.max_steps)}")
            wall = train(out, args, a.config)
            json.dump({"wall_s": wall}, open(f"{out}/wall.json", "w"))
        m, wall = json.load(open(f"{out}/metrics.json")), json.load(open(f"{out}/wall.json"))
        print(f"{row} seed {seed}: success {m['overall']['success']:.3f}"
              f" ({wall['wall_s'] / 60:.1f} min)", flush=True)
        return m, wall["wall_s"], seed

    todo = [(row, seed) for row in a.rows for seed in
            (a.seeds if row in MULTI_SEED else a.seeds[:1])]
    with ThreadPoolExecutor(a.jobs) as pool:  # each job is a train.py process
        list(pool.map(warmup, a.seeds))
        for (row, _), r in zip(todo, list(pool.map(lambda t: run(*t), todo))):
            results.setdefault(row, []).append(r)
    md = table(results)
    warms = [json.load(open(f"{a.root}/warmup_s{s}/wall.json"))["wall_s"] for s in a.seeds]
    md += (f"\n\nEvery run starts from the same identity warm-up per seed (with its eval:"
           f" {statistics.mean(warms) / 60:.1f} min, not included in min/run).")
    runs = sum(r[1] for rs in results.values() for r in rs) + sum(warms)
    cmd = "python ablations.py " + " ".join(argv if argv is not None else sys.argv[1:])
    open(f"{a.root}/results.md", "w").write(
        f"{md}\n\n`{cmd.strip()}`: {runs / 60:.0f} min of runs in all (warm-ups included), "
        f"{(time.time() - t0) / 60:.0f} min of wall clock in this call.\n")
    grid(results, a.root)
    print(md)
    print(f"wrote {a.root}/results.md and {a.root}/grid.png")


if __name__ == "__main__":
    main()
