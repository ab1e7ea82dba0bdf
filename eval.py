"""Evaluate a trained editor.

    python eval.py --ckpt out/small            # small world: the oracle table on a fixed eval set

(a) Small world: over the fixed, seeded eval set (toyworld.eval_edits: 500 edits, all five types,
held-out phrasings and colour x shape combinations included) the oracle's success, preservation
and realism per edit type, the held-out combinations separately; writes <ckpt>/eval/metrics.json
and a before/after grid (rows: input, edited, oracle target).
(b) Real images, the GEdit-Bench protocol (VIEScore), with any transformers VLM as the judge:

    python eval.py --gedit items.jsonl --edited DIR --judge Qwen/Qwen2.5-VL-7B-Instruct

items.jsonl: one {"image": path, "instruction": str, "group": str, "id": str} a line (or a
folder holding such a file as items.jsonl); DIR holds the edited images as <id>.png. Scores:
SC = min(editing success, over-editing) from source + edited image and instruction, PQ =
min(naturalness, artifacts) from the edited image alone, each 0-10; O = sqrt(SC * PQ); mean per
group, then mean over groups. A judge other than the paper's GPT model gives numbers that are
not comparable to published ones.
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
    """A judge_fn from any transformers image-text-to-text model, by hub id or local path."""
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


def vlm_reward_judge(judge, max_new_tokens=24):
    """A judge_fn from a vlm_reward.Judge (e.g. the small world's): greedy decoding through the
    same torch path the training loss uses. Images: PIL, any size (resized to the judge's)."""
    import torch
    import toyworld as tw

    def judge_fn(images, prompt):
        x = tw.to_tensor([im.convert("RGB").resize((judge.image_size,) * 2) for im in images])
        with torch.no_grad():
            feats = judge.image_features(x.to(judge.device))
            text, words = judge.prompt(prompt, len(images)), []
            for _ in range(max_new_tokens):
                logits, _, _ = judge.forward([text + " ".join(words)], [feats])
                w = judge.tokenizer.convert_ids_to_tokens(int(logits[0, -1].argmax()))
                if w == "<|im_end|>":
                    break
                words.append(w)
        return " ".join(words)
    return judge_fn


def read_items(path):
    """A JSONL of {"image", "instruction", "group", "id"}; a clear error naming the bad line."""
    from PIL import Image
    path = os.path.join(path, "items.jsonl") if os.path.isdir(path) else path
    root, items = os.path.dirname(os.path.abspath(path)), []
    for i, line in enumerate(open(path), 1):
        if not line.strip():
            continue
        try:
            it = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not JSON ({e})")
        missing = [k for k in ("image", "instruction", "group") if not it.get(k)]
        if missing:
            raise ValueError(f"{path}:{i}: missing field(s) {', '.join(missing)}")
        it.setdefault("id", os.path.splitext(os.path.basename(it["image"]))[0])
        it["image"] = os.path.join(root, it["image"])
        try:
            Image.open(it["image"]).verify()
        except Exception as e:
            raise ValueError(f"{path}:{i}: cannot read image {it['image']} ({e})")
        items.append(it)
    return items


def gedit(items, edited_dir, judge_fn):
    from PIL import Image
    from tqdm import tqdm
    rows = []
    for it in tqdm(items, desc="VIEScore"):
        src = Image.open(it["image"]).convert("RGB")
        out = Image.open(os.path.join(edited_dir, f"{it['id']}.png")).convert("RGB")
        rows.append((it["group"], viescore(judge_fn, src, out, it["instruction"])))
    return aggregate(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ckpt", default="out/small", help="a training run's out_dir or ckpt folder")
    p.add_argument("--n", type=int, default=500, help="eval set size")
    p.add_argument("--seed", type=int, default=1234, help="eval set seed")
    p.add_argument("--out", default=None, help="output folder (default <ckpt>/eval)")
    p.add_argument("--gedit", default=None, help="(b): items.jsonl, or a folder holding it")
    p.add_argument("--edited", default=None, help="(b): folder of edited images <id>.png")
    p.add_argument("--judge", default="Qwen/Qwen2.5-VL-7B-Instruct", help="(b): VLM id or path")
    a = p.parse_args(argv)
    if a.gedit:
        try:
            items = read_items(a.gedit)
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        print(NOT_COMPARABLE)
        res = gedit(items, a.edited or os.path.dirname(a.gedit), hf_judge(a.judge))
        for g, m in sorted(res["groups"].items()):
            print(f"{g:24s} SC {m['SC']:.2f}  PQ {m['PQ']:.2f}  O {m['O']:.2f}  (n {m['n']}, "
                  f"unreadable {m['unreadable']})")
        print(f"{'mean over groups':24s} " + "  ".join(f"{k} {v:.2f}" for k, v in res["overall"].items()))
        print(NOT_COMPARABLE)
        return res
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
