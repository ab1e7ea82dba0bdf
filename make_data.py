"""Training data from photos: a VLM writes each photo's caption, edit instructions and edited
captions, as the JSONL that `train.py --data` reads (real.read_jsonl).

    python make_data.py --images photos/ --vlm Qwen/Qwen2.5-VL-7B-Instruct --out edits.jsonl
    python make_data.py --images photos/ --out edits.jsonl --per_image 3 --types add,remove,style

The paper's data (docs/method.md, "Notation"): an LLM writes an instruction of an edit type
for each reference image, and a VLM checks it and writes c_x, the caption of the edited image; no
edited image is ever made. Here one VLM plays both parts, in three prompts (the constants below):
  CAPTION_PROMPT       the photo -> its caption c_y (the identity warm-up's prompt);
  INSTRUCTION_PROMPT   c_y and an edit type -> an instruction c (the LLM's part: text only);
  CHECK_PROMPT         the photo and c -> whether c applies to it, and c_x (the VLM's part).
The VLM sees the photo's center crop, the square the editor trains on (real.load_image). Each
reply must be JSON with the fields asked for; a bad one (not JSON, a field missing or empty, an
unknown type, an instruction equal to the caption, c_x equal to c_y, "not applicable", ...) is
asked again, up to --retries times, sampling (temperature 0.7) so a retry can differ; a row that
never passes is dropped and counted in the summary at the end. Each line written:
  {"image": path relative to the JSONL, "instruction": c, "edited_caption": c_x, "type": t,
   "caption": c_y}, and for a removal "object" (what the judge is asked is gone).
Resumable: photos already in --out are skipped (a photo whose every row was rejected is tried
again). The VLM is any function vlm_fn(images, prompt) -> reply (PIL images, maybe none); --vlm
builds one from a Qwen2.5-VL (real.load_vlm, transformers generate: eval.vlm_reward_judge).
"""
import argparse
import json
import os
import random
import sys
from collections import Counter

# The paper's edit types, each with what it means and an example, shown to the VLM.
EDIT_TYPES = {
    "add": ("add an object that is not in the photo", "add a red umbrella above the woman"),
    "remove": ("remove an object that is in the photo", "remove the car on the left"),
    "replace": ("replace an object in the photo by another", "replace the dog with a cat"),
    "color": ("change the colour of an object", "make the bicycle yellow"),
    "material": ("change the material or texture of an object", "make the table marble"),
    "shape": ("change the shape of an object", "make the round window square"),
    "background": ("change the background, keeping the subject", "put the man on a beach"),
    "style": ("render the whole photo in another style", "make it a watercolor painting"),
    "action": ("change what a person or animal is doing", "make the dog jump"),
    "text": ("add or change text written in the photo", "change the sign to say OPEN"),
}
CAPTION_PROMPT = (
    "Describe this photo in one sentence of at most 30 words: the main objects, their colours, "
    "the background and the style.\n"
    'Answer only with JSON: {"caption": "<the sentence>"}')
INSTRUCTION_PROMPT = (
    "You write instructions for an image editor. A photo shows: {caption}\n"
    "Write one instruction of the type '{type}' ({meaning}) that can be carried out on this "
    "photo, in at most 20 words, as a command, e.g. '{example}'.\n"
    'Answer only with JSON: {{"type": "{type}", "instruction": "<the instruction>", '
    '"object": "<what it adds, removes or changes, in a few words>"}}')
CHECK_PROMPT = (
    "Editing instruction: {instruction}\n"
    "Can this instruction be carried out on this photo (what it changes or removes is in the "
    "photo; what it adds would fit)? If it can, describe the photo as it would look after the "
    "edit, in one sentence of at most 30 words.\n"
    'Answer only with JSON: {{"applicable": true or false, "edited_caption": "<the sentence, '
    'or empty if not applicable>"}}')
MAX_WORDS = {"caption": 60, "instruction": 40, "edited_caption": 60, "object": 10}


class Rejected(ValueError):
    """A reply that fails validation; its message is the reason counted in the summary."""


def parse(reply):
    """The JSON object in a reply -> dict (a ```json fence, words around it and line breaks
    inside its strings tolerated)."""
    start, end = reply.find("{"), reply.rfind("}")
    try:
        d = json.loads(reply[start:end + 1], strict=False) if 0 <= start < end else None
    except json.JSONDecodeError:
        d = None
    if not isinstance(d, dict):
        raise Rejected("not JSON")
    return d


def text(d, k):
    """d[k] as one clean line: present, a non-empty string of at most MAX_WORDS[k] words."""
    v = d.get(k)
    if not isinstance(v, str) or not v.strip():
        raise Rejected(f"{k} missing or empty")
    if len(v.split()) > MAX_WORDS[k]:
        raise Rejected(f"{k} too long")
    return " ".join(v.split())


def same(a, b):
    return a.lower().strip(" .") == b.lower().strip(" .")


def check_caption(reply):
    return text(parse(reply), "caption")


def check_instruction(reply, typ, caption):
    """-> (instruction, object or None): the object is optional (train.py reads a removal's off
    its instruction when a row names none)."""
    d = parse(reply)
    instruction = text(d, "instruction")
    obj = text(d, "object") if "object" in d else None
    if d.get("type", typ) not in EDIT_TYPES:
        raise Rejected("unknown type")
    if d.get("type", typ) != typ:
        raise Rejected("another type than asked")
    if same(instruction, caption):
        raise Rejected("instruction equals the caption")
    return instruction, obj


def check_edit(reply, caption, instruction):
    d = parse(reply)
    if d.get("applicable") not in (True, "true", "yes", "Yes"):
        raise Rejected("not applicable" if "applicable" in d else "applicable missing")
    edited = text(d, "edited_caption")
    if same(edited, caption):
        raise Rejected("edited caption equals the caption")
    if same(edited, instruction):
        raise Rejected("edited caption equals the instruction")
    return edited


def ask(vlm_fn, images, prompt, check, retries):
    """vlm_fn's reply to prompt, through check, asked again on Rejected up to `retries` times.
    -> check's value; raises Rejected with the last reason."""
    for _ in range(retries + 1):
        try:
            return check(vlm_fn(images, prompt))
        except Rejected as e:
            reason = e
    raise reason


def rows_for(vlm_fn, image, types, retries):
    """One photo (PIL) -> (accepted rows without "image", [reasons of the rejected])."""
    try:
        caption = ask(vlm_fn, [image], CAPTION_PROMPT, check_caption, retries)
    except Rejected as e:
        return [], [f"caption: {e}"] * len(types)
    rows, rejected = [], []
    for typ in types:
        meaning, example = EDIT_TYPES[typ]
        try:
            instruction, obj = ask(vlm_fn, [], INSTRUCTION_PROMPT.format(
                caption=caption, type=typ, meaning=meaning, example=example),
                lambda r: check_instruction(r, typ, caption), retries)
            edited = ask(vlm_fn, [image], CHECK_PROMPT.format(instruction=instruction),
                         lambda r: check_edit(r, caption, instruction), retries)
        except Rejected as e:
            rejected.append(f"{typ}: {e}")
            continue
        rows.append({"instruction": instruction, "edited_caption": edited, "type": typ,
                     "caption": caption, **({"object": obj} if obj and typ == "remove" else {})})
    return rows, rejected


def done_images(out):
    """The photos (absolute paths) already in the output JSONL; a torn last line (a kill while
    writing) is cut off."""
    if not os.path.exists(out):
        return set()
    root, good, done = os.path.dirname(os.path.abspath(out)), [], set()
    for line in open(out, encoding="utf-8"):
        try:
            done.add(os.path.normpath(os.path.join(root, json.loads(line)["image"])))
            good.append(line if line.endswith("\n") else line + "\n")
        except (json.JSONDecodeError, KeyError, TypeError):
            print(f"note: dropped a broken line of {out}", file=sys.stderr)
    open(out, "w", encoding="utf-8").writelines(good)
    return done


def make_data(vlm_fn, images, out, per_image=1, types=tuple(EDIT_TYPES), retries=2, seed=0,
              image_size=448):
    """Write rows for each photo in images (paths) not yet in out -> Counter of reject reasons
    (plus "written": rows written). Types: per_image of `types` a photo, drawn without repeats
    by a seeded RNG per photo (the same draw on a resumed run)."""
    import real
    import toyworld as tw
    from PIL import Image
    from tqdm import tqdm
    done, stats = done_images(out), Counter()
    root = os.path.dirname(os.path.abspath(out))
    todo = [p for p in images if os.path.normpath(os.path.abspath(p)) not in done]
    with open(out, "a", encoding="utf-8") as f:
        for path in tqdm(todo, desc="photos"):
            picked = random.Random(f"{seed}:{os.path.basename(path)}").sample(
                list(types), min(per_image, len(types)))
            try:  # the center crop the editor will train on
                image = Image.fromarray(tw.to_uint8(real.load_image(path, image_size)[None])[0])
            except ValueError:
                stats.update(["unreadable image"] * len(picked))
                continue
            rows, rejected = rows_for(vlm_fn, image, picked, retries)
            stats.update(rejected)
            rel = os.path.relpath(os.path.abspath(path), root)
            f.write("".join(json.dumps({"image": rel, **r}) + "\n" for r in rows))
            f.flush()  # one photo's rows at a time: a kill loses at most the photo in progress
            stats["written"] += len(rows)
    return stats


def main(argv=None, vlm_fn=None):
    """vlm_fn: instead of loading --vlm (tests pass fixed replies)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", required=True, help="a folder of photos (searched recursively)")
    p.add_argument("--vlm", default="Qwen/Qwen2.5-VL-7B-Instruct", help="Qwen2.5-VL id or folder")
    p.add_argument("--out", required=True, help="the JSONL to write (appended to: resumable)")
    p.add_argument("--per_image", type=int, default=1, help="instructions per photo")
    p.add_argument("--types", default=",".join(EDIT_TYPES), help="edit types, comma-separated")
    p.add_argument("--retries", type=int, default=2, help="re-asks of a bad reply")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_new_tokens", type=int, default=96)
    a = p.parse_args(argv)
    from PIL import Image
    types = [t.strip() for t in a.types.split(",") if t.strip()]
    bad = [t for t in types if t not in EDIT_TYPES]
    if bad or not types:
        sys.exit(f"error: --types: unknown type {bad[0] if bad else '(none)'!r}; known: "
                 f"{', '.join(EDIT_TYPES)}")
    if a.per_image < 1 or a.retries < 0:
        sys.exit("error: --per_image must be >= 1 and --retries >= 0")
    if not os.path.isdir(a.images):
        sys.exit(f"error: --images {a.images} is not a folder")
    known = set(Image.registered_extensions())
    images = sorted(os.path.join(d, f) for d, _, fs in os.walk(a.images) for f in fs
                    if os.path.splitext(f)[1].lower() in known)
    if not images:
        sys.exit(f"error: no images in {a.images}")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    import torch
    torch.manual_seed(a.seed)  # the sampled replies, reproducibly
    if vlm_fn is None:
        import eval as E
        import real
        real.quiet()
        judge = real.load_vlm(a.vlm, key="vlm", image_size=448,
                              dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32)
        judge.vlm.to("cuda" if torch.cuda.is_available() else "cpu")
        vlm_fn = E.vlm_reward_judge(judge, a.max_new_tokens, do_sample=True)
    stats = make_data(vlm_fn, images, a.out, a.per_image, types, a.retries, a.seed)
    written = stats.pop("written", 0)
    print(f"wrote {written} rows to {a.out}; rejected {sum(stats.values())}"
          + "".join(f"\n  {n:5d}  {reason}" for reason, n in stats.most_common()))
    return written, stats


if __name__ == "__main__":
    main()
