"""Evaluate a trained editor: the small world's oracle table, or GEdit-Bench with VIEScore.

    python eval.py --ckpt out/small                                    # (a) the small world
    python eval.py --gedit gedit/ --ckpt out/base --judge Qwen/Qwen2.5-VL-7B-Instruct   # (b)

(a) Small world: over the fixed, seeded eval set (toytext.eval_edits: 500 edits, all five types,
held-out grammar and colour x shape combinations included) the oracle's success, preservation
and realism per edit type, and on the held-out parts separately; writes <ckpt>/eval/metrics.json
and a grid (rows: input, edited, oracle target; each column captioned with its instruction).

(b) GEdit-Bench, the paper's benchmark, in one resumable command: edit every item with the
editor (--ckpt: a run or an export.py folder; as sample.py --keep_size: the input's short side
resized to the run's resolution and center-cropped, 4 steps, the edit scaled back over its crop),
then score every edit with VIEScore and any VLM as the judge. An item whose edited image exists
is not edited again; with all edits present no editor is needed (then --edited DIR alone).
--gedit reads:
  - the release, Hugging Face dataset stepfun-ai/GEdit-Bench as `hf download
    stepfun-ai/GEdit-Bench --repo-type=dataset --local-dir gedit` lays it out: Arrow files
    (*.arrow, or *.parquet) anywhere in the folder, one row per item with the fields key,
    task_type (the group, 11 of them: background_change, color_alter, material_alter,
    motion_change, ps_human, style_change, subject-add, subject-remove, subject-replace,
    text_change, tone_transfer), instruction, instruction_language (en | cn), input_image and
    input_image_raw (images: {"bytes", "path"}), Intersection_exist; read with pyarrow (which
    `datasets` installs). 606 items a language; --language en (the paper's), cn or all;
  - that release as an image folder: metadata.jsonl beside the images, one row an item with
    the same fields, input_image (or file_name) a path relative to the folder;
  - this repo's items JSONL: {"image": path, "instruction": str, "group": str, "id": str} a
    line, or a folder holding it as items.jsonl.
A folder without any of these is a one-line error. Edits go to --edited DIR (default
<ckpt>/gedit): release items in DIR/fullset/<task_type>/<language>/<key>.png beside the input as
<key>_SRCIMG.png (the layout GEdit-Bench's own scripts write and score), items-JSONL ones as
DIR/<id>.png. Scores: SC = min(editing success, over-editing) from source + edited image and
instruction, PQ = min(naturalness, artifacts) from the edited image alone, each 0-10; O =
sqrt(SC * PQ); mean per group, then mean over groups; printed and written to DIR/scores.json.
The judge is a function judge_fn(images, prompt) -> reply (main(judge_fn=...) takes any); a
judge other than the paper's GPT model gives numbers not comparable to published ones.
"""
import argparse
import json
import os
import sys


def table(metrics):
    """The oracle metrics as a markdown table."""
    rows = [("overall", metrics["overall"]), *metrics["by_type"].items(),
            *[(k, metrics[key]) for k, key in (("trained grammar and combos", "trained"),
                                                ("held-out grammar", "heldout_grammar"),
                                                ("held-out combos", "heldout_combos"))
              if key in metrics]]
    if "warmup_only" in metrics:
        rows.append(("warm-up only (overall)", metrics["warmup_only"]))
    out = ["| edits | success | preservation | realism |", "|---|---|---|---|"]
    out += [f"| {k} | {m['success']:.3f} | {m['preservation']:.3f} | {m['realism']:.3f} |"
            for k, m in rows]
    return "\n".join(out)


def oracle(generator, n, device, shift, grid_path, seed=1234):
    """(a): the small world's oracle on the fixed eval set (n edits, seeded) -> metrics
    (toyworld.summarize); writes a grid of inputs, edits and targets, each column captioned with
    its instruction. train.py calls it after the warm-up and at the end."""
    import torch

    import model as M
    import toytext as tt
    import toyworld as tw
    edits = tt.eval_edits(n, seed=seed)
    mode = generator.training
    generator.eval()
    with torch.no_grad():
        metrics, images = tw.evaluate(M.editor_fn(generator, device, shift), edits)
    generator.train(mode)
    idx = [i for i in (*range(5), *range(10, 15)) if i < len(edits)]  # two of each type
    show = [edits[i] for i in idx]
    tw.grid([[tw.render(e.reference) for e in show], [images[i] for i in idx],
             [tw.render(e.target) for e in show]], scale=4, captions=[e.instruction for e in show],
            names=["input", "edited", "target"]).save(grid_path)
    return metrics


# ----------------------------------------------------------------------------- VIEScore (b)
SC_PROMPT = (
    "You judge image edits. The first image is the original, the second is the result of "
    "applying an editing instruction to it; if the two look identical, the edit failed. Give two "
    "scores from 0 to 10: the first for how well the second image follows the instruction (0: "
    "not at all, 10: perfectly), the second for how little else was changed (0: a different "
    "image, 10: only what the instruction asks changed). Instruction: {instruction}\n"
    'Answer only with JSON: {{"reasoning": "<one short sentence>", "score": [s1, s2]}}')
PQ_PROMPT = (
    "You judge the quality of an image. Give two scores from 0 to 10: the first for how natural "
    "the image looks (0: not at all, 10: fully natural), the second for the absence of artifacts "
    "such as distortion, blur or broken parts (0: heavy artifacts, 10: none).\n"
    'Answer only with JSON: {{"reasoning": "<one short sentence>", "score": [s1, s2]}}')
NOT_COMPARABLE = ("note: this judge is not the paper's GPT model; these numbers are not "
                  "comparable to published GEdit-Bench scores")


def parse_scores(reply, n=2):
    """The n scores of a judge reply: the list after "score", else the first n numbers in 0-10;
    None if fewer than n can be read. Scores are clipped to [0, 10]."""
    import re
    m = re.search(r'"?score"?\s*[:=]\s*\[([^\]]*)\]', reply)
    nums = re.findall(r"-?\d+(?:\.\d+)?", m.group(1) if m else reply)
    vals = [min(10.0, max(0.0, float(x))) for x in nums]
    if not m:
        vals = [v for v, x in zip(vals, nums) if 0 <= float(x) <= 10]
    return vals[:n] if len(vals) >= n else None


def viescore(judge_fn, source, edited, instruction):
    """-> {"SC", "PQ", "O"} or None for an unreadable reply. judge_fn(images, prompt) -> text."""
    sc = parse_scores(judge_fn([source, edited], SC_PROMPT.format(instruction=instruction)))
    pq = parse_scores(judge_fn([edited], PQ_PROMPT.format()))
    if sc is None or pq is None:
        return None
    SC, PQ = min(sc), min(pq)
    return {"SC": SC, "PQ": PQ, "O": (SC * PQ) ** 0.5}


def aggregate(rows):
    """rows: (group, scores or None) -> per-group means and the mean over groups (GEdit-Bench)."""
    groups = {}
    for g, s in rows:
        groups.setdefault(g, []).append(s)
    per = {g: {k: sum(s[k] for s in v if s) / max(1, sum(1 for s in v if s))
               for k in ("SC", "PQ", "O")} | {"n": len(v), "unreadable": sum(s is None for s in v)}
           for g, v in groups.items()}
    overall = {k: sum(p[k] for p in per.values()) / len(per) for k in ("SC", "PQ", "O")}
    return {"groups": per, "overall": overall}


def hf_judge(model_id, max_new_tokens=96):
    """A judge_fn from any transformers image-text-to-text model, by hub id or local path, through
    its AutoProcessor (Qwen2.5-VL's needs torchvision; vlm_reward_judge does not)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    processor = AutoProcessor.from_pretrained(model_id)
    vlm = AutoModelForImageTextToText.from_pretrained(model_id, dtype="auto").eval()
    return processor_judge(vlm, processor, max_new_tokens)


def processor_judge(vlm, processor, max_new_tokens=96):
    import torch

    def judge_fn(images, prompt):
        msgs = [{"role": "user", "content": [*({"type": "image"} for _ in images),
                                             {"type": "text", "text": prompt}]}]
        text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], images=images, return_tensors="pt").to(vlm.device)
        with torch.no_grad():
            out = vlm.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return processor.batch_decode(out[:, inputs["input_ids"].shape[1]:],
                                      skip_special_tokens=True)[0]
    return judge_fn


def vlm_reward_judge(judge, max_new_tokens=24, do_sample=False, temperature=0.7):
    """A judge_fn from a vlm_reward.Judge (the small world's judge, or real.load_vlm's
    Qwen2.5-VL): transformers' generate on the judge's own inputs, the chat template with the
    question first and each image resized to the judge's size and patchified in torch as Qwen's
    processor does (Judge.pixels), so neither a processor nor torchvision is needed. Images: PIL,
    any size, or none (a text-only prompt). Greedy unless do_sample."""
    import torch
    import toyworld as tw
    sampling = {"do_sample": True, "temperature": temperature} if do_sample else {}

    def judge_fn(images, prompt):
        tok = judge.tokenizer([judge.prompt(prompt, len(images))], return_tensors="pt")
        ids, mask, extra = tok.input_ids.to(judge.device), tok.attention_mask.to(judge.device), {}
        if images:
            x = tw.to_tensor([im.convert("RGB").resize((judge.image_size,) * 2) for im in images])
            pv, grid = judge.pixels(x.to(judge.device))
            extra = {"pixel_values": pv.to(judge.vlm.dtype), "image_grid_thw": grid}
        with torch.no_grad():
            out = judge.vlm.generate(input_ids=ids, attention_mask=mask, **extra,
                                     max_new_tokens=max_new_tokens, **sampling)
        return judge.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    return judge_fn


def read_items(path):
    """This repo's items JSONL: {"image", "instruction", "group", "id"} a line (real.read_jsonl's
    checks, each naming file:line). -> items with "out", the edited image's name."""
    import real
    from PIL import Image
    path = os.path.join(path, "items.jsonl") if os.path.isdir(path) else path
    items = real.read_jsonl(path, fields=("image", "instruction", "group"), optional=("id",))
    for n, it in enumerate(items, 1):
        it.setdefault("id", os.path.splitext(os.path.basename(it["image"]))[0])
        it["out"] = f"{it['id']}.png"
        try:
            Image.open(it["image"]).verify()
        except Exception as e:
            raise ValueError(f"{path}: item {n}: cannot read image {it['image']} ({e})")
    return items


GEDIT_FIELDS = ("key", "task_type", "instruction", "instruction_language")


def arrow_rows(path):
    """The rows of one of the release's files, as dicts: an Arrow stream (what `datasets`
    writes), an Arrow file, or Parquet (the hub's converted copy)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("reading GEdit-Bench's Arrow files needs pyarrow: pip install pyarrow")
    if path.endswith(".parquet"):
        return pq.read_table(path).to_pylist()
    with pa.memory_map(path) as src:
        try:
            return pa.ipc.open_stream(src).read_all().to_pylist()
        except pa.ArrowInvalid:
            return pa.ipc.open_file(src).read_all().to_pylist()


def read_gedit(path, edited, language="en"):
    """The GEdit-Bench release (its Arrow or Parquet files) or its image-folder form
    (metadata.jsonl) at path -> items in `language` ("all": every one), in the layout of the
    module docstring; the release's input images are written out as <key>_SRCIMG.png."""
    import glob
    import io
    from PIL import Image
    files = sorted(glob.glob(f"{path}/**/*.arrow", recursive=True)) or \
        sorted(glob.glob(f"{path}/**/*.parquet", recursive=True))
    meta = os.path.join(path, "metadata.jsonl")
    if files:
        rows = [(f, r) for f in files for r in arrow_rows(f)]
    elif os.path.isfile(meta):
        rows = [(meta, json.loads(line)) for line in open(meta, encoding="utf-8") if line.strip()]
    else:
        raise ValueError(f"{path}: no GEdit-Bench metadata here (neither the release's *.arrow or "
                         f"*.parquet files nor metadata.jsonl); get it with `hf download "
                         f"stepfun-ai/GEdit-Bench --repo-type=dataset --local-dir {path}`")
    items = []
    for n, (where, r) in enumerate(rows, 1):
        missing = [k for k in GEDIT_FIELDS if not r.get(k)]
        image = r.get("input_image") or r.get("file_name")
        if missing or not image:
            raise ValueError(f"{where}: row {n}: missing field(s) "
                             f"{', '.join(missing + ([] if image else ['input_image']))}")
        if language not in ("all", r["instruction_language"]):
            continue
        sub = os.path.join("fullset", r["task_type"], r["instruction_language"])
        if isinstance(image, dict):  # the release: the image's bytes -> <key>_SRCIMG.png
            src = os.path.join(edited, sub, f"{r['key']}_SRCIMG.png")
            if not os.path.exists(src):
                os.makedirs(os.path.dirname(src), exist_ok=True)
                Image.open(io.BytesIO(image["bytes"])).convert("RGB").save(src)
        else:
            src = os.path.join(os.path.dirname(meta), image)
        items.append({"image": src, "instruction": r["instruction"], "group": r["task_type"],
                      "id": r["key"], "out": os.path.join(sub, f"{r['key']}.png")})
    return items


def edit_items(items, edited_dir, edit, cfg):
    """Edit each item whose edited image is not in edited_dir yet (sample.py's path, at the
    input's size). -> how many were edited."""
    import sample
    from tqdm import tqdm
    todo = [it for it in items if not os.path.exists(os.path.join(edited_dir, it["out"]))]
    for it in tqdm(todo, desc="editing"):
        out = os.path.join(edited_dir, it["out"])
        edited, _ = sample.edit_image(edit, cfg, sample.open_image(it["image"]),
                                      it["instruction"].lower(), keep_size=True)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        edited.save(out + ".tmp.png")  # whole or absent: a kill leaves no half-written edit
        os.replace(out + ".tmp.png", out)
    return len(todo)


def gedit(items, edited_dir, judge_fn):
    from PIL import Image
    from tqdm import tqdm
    rows = []
    for it in tqdm(items, desc="VIEScore"):
        src = Image.open(it["image"]).convert("RGB")
        out = Image.open(os.path.join(edited_dir, it["out"])).convert("RGB")
        rows.append((it["group"], viescore(judge_fn, src, out, it["instruction"])))
    return aggregate(rows)


def run_gedit(a, judge_fn=None):
    """(b): read the items, make the missing edits, score them all."""
    def fail(msg):
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
    edited = a.edited or (a.ckpt and os.path.join(a.ckpt, "gedit"))
    if not edited:
        fail("--gedit needs --ckpt RUN (to edit; edits go to RUN/gedit) or --edited DIR")
    release = os.path.isdir(a.gedit) and not os.path.isfile(os.path.join(a.gedit, "items.jsonl"))
    try:
        items = read_gedit(a.gedit, edited, a.language) if release else read_items(a.gedit)
    except (OSError, ValueError) as e:
        fail(str(e))
    if not items:
        fail(f"{a.gedit}: no items in language {a.language!r}")
    missing = [it for it in items if not os.path.exists(os.path.join(edited, it["out"]))]
    if missing and not a.ckpt:
        fail(f"{len(missing)} of {len(items)} items have no edit in {edited}; pass --ckpt RUN "
             "to make them")
    if missing:
        import torch
        import sample
        device = "cuda" if torch.cuda.is_available() else "cpu"
        edit, cfg, generator = sample.load(a.ckpt, device, a.prior)
        print(f"edited {edit_items(items, edited, edit, cfg)} items "
              f"({len(items) - len(missing)} done already) into {edited}")
        del edit, generator  # the editor's memory back before the judge loads
        if device == "cuda":
            torch.cuda.empty_cache()
    else:
        print(f"all {len(items)} items are edited already in {edited}")
    print(NOT_COMPARABLE)
    res = gedit(items, edited, judge_fn or hf_judge(a.judge))
    for g, m in sorted(res["groups"].items()):
        print(f"{g:24s} SC {m['SC']:.2f}  PQ {m['PQ']:.2f}  O {m['O']:.2f}  (n {m['n']}, "
              f"unreadable {m['unreadable']})")
    print(f"{'mean over groups':24s} " + "  ".join(f"{k} {v:.2f}"
                                                    for k, v in res["overall"].items()))
    res |= {"judge": a.judge if judge_fn is None else getattr(judge_fn, "__name__", "custom"),
            "ckpt": a.ckpt, "note": NOT_COMPARABLE}
    json.dump(res, open(os.path.join(edited, "scores.json"), "w"), indent=1)
    print(f"wrote {os.path.join(edited, 'scores.json')}")
    print(NOT_COMPARABLE)
    return res


def main(argv=None, judge_fn=None):
    """judge_fn: (b)'s judge, instead of loading --judge (tests pass fixed replies)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ckpt", default=None, help="a run's out_dir or ckpt folder, or (b) an "
                   "export.py folder (a: default out/small)")
    p.add_argument("--n", type=int, default=500, help="(a) eval set size")
    p.add_argument("--seed", type=int, default=1234, help="(a) eval set seed")
    p.add_argument("--out", default=None, help="(a) output folder (default <ckpt>/eval)")
    p.add_argument("--gedit", default=None, help="(b) the GEdit-Bench folder, or items.jsonl")
    p.add_argument("--edited", default=None, help="(b) folder of the edits (default <ckpt>/gedit)")
    p.add_argument("--language", default="en", choices=["en", "cn", "all"], help="(b) release")
    p.add_argument("--judge", default="Qwen/Qwen2.5-VL-7B-Instruct", help="(b) VLM id or path")
    p.add_argument("--prior", default=None, help="(b) a local copy of the run's base model")
    a = p.parse_args(argv)
    if a.gedit:
        return run_gedit(a, judge_fn)
    import real
    from checkpoint import load_editor
    a.ckpt = a.ckpt or "out/small"
    real.quiet()
    try:
        generator, cfg = load_editor(a.ckpt)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if cfg.kind != "small":
        print(f"error: {a.ckpt} edits photos; the oracle scores the small world: use --gedit",
              file=sys.stderr)
        sys.exit(2)
    out = a.out or os.path.join(a.ckpt, "eval")
    os.makedirs(out, exist_ok=True)
    metrics = oracle(generator, a.n, "cpu", cfg.shift, f"{out}/grid.png", seed=a.seed)
    json.dump(metrics, open(f"{out}/metrics.json", "w"), indent=1)
    print(table(metrics))
    print(f"wrote {out}/metrics.json and {out}/grid.png (rows: input, edited, oracle target)")


if __name__ == "__main__":
    main()
