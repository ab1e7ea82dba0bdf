"""The VLM judge and NP-Edit's first loss: differentiable yes/no answers (docs/method.md,
"Loss 1: VLM yes/no feedback").

The judge is a transformers Qwen2.5-VL (Qwen2_5_VLForConditionalGeneration), the family of the
real presets; in the small world a tiny one pretrained by `pretrain.py judge`. Everything on the
gradient path is torch: images in [-1, 1] are mapped to [0, 1], resized (bicubic, antialiased)
to the judge's resolution, normalised with its mean/std and patchified exactly as Qwen2-VL's
image processor does, so d(answer)/d(pixels) exists. The reference image's vision features are
computed once, without grad, and passed to the language model through `mm_encoder_outputs`.

Questions (reference image first, candidate second), expected answer "yes" unless said:
  edit verification: EDIT_Q.format(instruction=c)
  identity:          SAME_Q.format(instruction=c)
  removal:           HAS_Q.format(object=o) on the candidate alone, expected "no"; its identity
                     question says to ignore that object (SAME_REMOVE_Q). The edit type picks
                     this form; o is the removed object as the instruction names it.
Loss (docs/method.md, eq. for L_vlm): with l_yes, l_no the answer-position logits,
  p(answer) = sigmoid(l_answer - l_other),  L_vlm = mean over questions of -log p(answer),
or, for the ablation, full-vocabulary cross-entropy on the answer token.
"""
import re

import torch
import torch.nn.functional as F
from transformers import (AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration)
from transformers.modeling_outputs import BaseModelOutputWithPooling

EDIT_Q = ("the second image is an edit of the first . was this instruction done : {instruction} ? "
          "if the two images look identical the edit failed . answer yes or no .")
SAME_Q = ("apart from the edit : {instruction} , is the second image the same as the first ? "
          "answer yes or no .")
SAME_REMOVE_Q = ("apart from {object} , is the second image the same as the first ? answer yes "
                 "or no .")
HAS_Q = "does the image have {object} ? answer yes or no ."
REMOVE_VERBS = r"^(please )?(remove|delete|take away|get rid of|erase) "

SPECIAL = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
           "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def removed_object(instruction):
    """'remove the red circle at top left' -> 'the red circle at top left': the removed object of
    a removal whose data names none (real JSONL rows without an "object" field); None if the
    instruction does not start with a removal verb."""
    m = re.match(REMOVE_VERBS, instruction.strip().lower())
    return instruction.strip()[m.end():].strip(" .") if m else None


# ----------------------------------------------------------------------------- the judge model

def tiny_judge_config(tokenizer, vision_width=96, text_width=128, text_layers=4, patch_size=8,
                      window_size=32, vision_depth=2, vision_heads=4, vision_intermediate=None,
                      fullatt=None, heads=4, kv_heads=2, intermediate=None, rope_theta=1e4):
    """A small-world Qwen2.5-VL: vision patch 8 + merge 2, so each merged visual token of a
    32x32 image is one 16 px cell of the world (docs/log.md, "The judge"). The other arguments build
    the real presets' tiny twins and (real.QWEN_SIZES) the published sizes."""
    ids = tokenizer.convert_tokens_to_ids
    half = text_width // heads // 2  # rotary half-dim per head; M-RoPE splits it over (t, h, w)
    mrope = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    return Qwen2_5_VLConfig(
        vision_config=dict(depth=vision_depth, hidden_size=vision_width,
                           intermediate_size=vision_intermediate or 2 * vision_width,
                           num_heads=vision_heads, patch_size=patch_size, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=window_size,
                           out_hidden_size=text_width,
                           fullatt_block_indexes=list(fullatt or range(vision_depth))),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=text_width,
                         intermediate_size=intermediate or 2 * text_width,
                         num_hidden_layers=text_layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, max_position_embeddings=256,
                         rope_parameters={"rope_type": "default", "rope_theta": rope_theta,
                                          "mrope_section": mrope},
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=ids("<|im_start|>"),
                         eos_token_id=ids("<|im_end|>"), tie_word_embeddings=True),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True)


class Judge:
    """A transformers VLM plus what is needed to ask it yes/no questions differentiably."""

    def __init__(self, vlm, tokenizer, image_size=32, yes="yes", no="no",
                 mean=CLIP_MEAN, std=CLIP_STD):
        self.vlm, self.tokenizer, self.image_size = vlm, tokenizer, image_size
        vc = vlm.config.vision_config
        self.patch, self.merge, self.tp = vc.patch_size, vc.spatial_merge_size, vc.temporal_patch_size
        self.tokens_per_image = (image_size // self.patch) ** 2 // self.merge ** 2
        self.yes_id, self.no_id = tokenizer.convert_tokens_to_ids([yes, no])
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    @property
    def device(self):
        return next(self.vlm.parameters()).device

    # -- images ---------------------------------------------------------------------------
    def pixels(self, images):
        """(B, 3, H, W) in [-1, 1] -> Qwen2-VL patches (B * gh * gw, 3 * tp * p * p) and the
        grid (B, 3), in torch so gradients flow (the processor's numpy patchify, re-done)."""
        x = (images.float() + 1) / 2
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size,) * 2, mode="bicubic", antialias=True,
                              align_corners=False)
        x = (x - self.mean.to(x)) / self.std.to(x)
        B, C, H, W = x.shape
        p, m, gh, gw = self.patch, self.merge, H // self.patch, W // self.patch
        x = x[:, None].expand(B, self.tp, C, H, W)  # one frame repeated temporal_patch times
        x = x.reshape(B, self.tp, C, gh // m, m, p, gw // m, m, p)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(B * gh * gw, C * self.tp * p * p)
        grid = torch.tensor([[1, gh, gw]] * B, device=x.device)
        return x, grid

    def image_features(self, images):
        """Merged visual tokens (B, tokens_per_image, D): one per 16 px cell in the small world."""
        pv, grid = self.pixels(images)
        out = self.vlm.model.visual(pv.to(self.vlm.dtype), grid_thw=grid).pooler_output
        return out.view(images.shape[0], self.tokens_per_image, -1)

    # -- text -----------------------------------------------------------------------------
    def prompt(self, question, n_images, answer=None):
        """The chat-template text for one question about n_images images, image placeholders
        expanded to the number of visual tokens; with answer, the answer and end token appended."""
        # question first, then the images: causal attention lets every visual token see the
        # question, so it can check "am I what is asked about?" (images first left the tiny
        # judge at chance on yes/no after 9 CPU-min, though it captioned perfectly)
        content = [{"type": "text", "text": question}] + [{"type": "image"}] * n_images
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                                  tokenize=False, add_generation_prompt=True)
        text = text.replace("<|image_pad|>", "<|image_pad|>" * self.tokens_per_image)
        return text + (f"{answer}<|im_end|>" if answer is not None else "")

    def forward(self, texts, features, hidden=False):
        """Run the language model on texts whose image placeholders are filled, in order, by
        features (a list of (B_i, tokens, D) tensors, concatenated in text order). Right-padded.
        Returns (logits (B, L, V), attention mask (B, L), input ids)."""
        tok = self.tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
        ids = tok.input_ids
        feats = torch.cat([f.reshape(-1, f.shape[-1]) for f in features], 0)
        n_img = feats.shape[0] // self.tokens_per_image
        g = self.image_size // self.patch
        grid = torch.tensor([[1, g, g]] * n_img, device=ids.device)
        out = self.vlm(input_ids=ids, attention_mask=tok.attention_mask, image_grid_thw=grid,
                       mm_token_type_ids=(ids == self.vlm.config.image_token_id).long(),
                       mm_encoder_outputs={"image": BaseModelOutputWithPooling(
                           pooler_output=(feats.to(self.vlm.dtype),))}, output_hidden_states=hidden)
        if hidden:  # also the last layer's hidden states (B, L, D), for pretraining's heads
            return out.logits, tok.attention_mask, ids, out.hidden_states[-1]
        return out.logits, tok.attention_mask, ids

    def answer_logits(self, questions, images_per_question):
        """l_yes - l_no at the answer position (fp32) for each question. images_per_question:
        a list of feature tensors (B, tokens, D), one per image slot, the same count for all."""
        texts = [self.prompt(q, len(images_per_question)) for q in questions]
        # interleave so that sample b's images come in order: slot0[b], slot1[b], ...
        feats = torch.stack(images_per_question, 1).flatten(0, 1)
        return self.ask(texts, [feats])

    def ask(self, texts, features):
        """-> (l_yes - l_no (B,), all answer logits (B, V)), fp32, at each prompt's answer
        position; texts and features as forward takes them."""
        logits, mask, _ = self.forward(texts, features)
        last = mask.sum(1) - 1
        ans = logits[torch.arange(len(texts), device=logits.device), last].float()  # fp32
        return ans[:, self.yes_id] - ans[:, self.no_id], ans


def judge_tokenizer(extra_words=()):
    """The small world's word-level tokenizer plus Qwen's chat tokens and the words of this file's
    questions (extra_words: more, e.g. the judge's pretraining questions)."""
    from toytext import build_tokenizer
    words = set(extra_words)
    for q in (EDIT_Q, SAME_Q, SAME_REMOVE_Q, HAS_Q, "user assistant yes no"):  # + chat roles
        words.update(w for w in q.split() if "{" not in w)
    tok = build_tokenizer(extra_words=words, extra_special=SPECIAL)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def load_judge(path, **kw):
    vlm = Qwen2_5_VLForConditionalGeneration.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return Judge(vlm.eval().requires_grad_(False), tokenizer, **kw)


def small_judge(path):
    """The small world's judge: a folder written by pretrain.py, or "random" (a tiny random one,
    for tests)."""
    if path != "random":
        return load_judge(path)
    tok = judge_tokenizer()
    vlm = Qwen2_5_VLForConditionalGeneration(tiny_judge_config(tok, 32, 32, 1))
    return Judge(vlm.eval().requires_grad_(False), tok)


# ----------------------------------------------------------------------------- the loss

def edit_questions(instruction, type, obj=None):
    """The paper's two questions for one edit: [(question, n_images, expected_yes)]. A removal
    (type "remove") asks whether the edited image still has the object (obj: as the instruction
    names it; default removed_object(instruction)), any other edit whether it was executed."""
    if type == "remove":
        obj = obj or removed_object(instruction) or instruction
        return [(HAS_Q.format(object=obj), 1, False), (SAME_REMOVE_Q.format(object=obj), 2, True)]
    return [(EDIT_Q.format(instruction=instruction), 2, True),
            (SAME_Q.format(instruction=instruction), 2, True)]


def answer_logits(judge, reference, edited, instructions, types, objects=None, ref_features=None,
                  slots=(0, 1)):
    """Ask every sample its questions (edit_questions; slots picks which). -> a list of groups
    (idx, d, full, want), one per (question slot, image count): the samples idx (B_g,) asked it,
    d = l_yes - l_no (B_g,) and the full answer logits (B_g, V), both fp32, and the expected
    answer want (B_g,) bool. The reference features are computed without grad."""
    if ref_features is None:
        with torch.no_grad():
            ref_features = judge.image_features(reference)
    cand = judge.image_features(edited)
    objects = objects or [None] * len(instructions)
    questions = [edit_questions(c, t, o) for c, t, o in zip(instructions, types, objects)]
    asked, texts, feats = [], [], []  # every group's questions go through one LM pass
    for slot in slots:  # the edit (0) and the identity (1) question of every sample
        qs = [q[slot] for q in questions]
        for n_img in (1, 2):  # removal's "does the image have <object>?" sees the edit alone
            idx = [b for b, q in enumerate(qs) if q[1] == n_img]
            if not idx:
                continue
            i = torch.tensor(idx, device=cand.device)
            texts += [judge.prompt(qs[b][0], n_img) for b in idx]
            feats.append(cand[i] if n_img == 1 else  # sample b's images in order: y, then x
                         torch.stack([ref_features[i], cand[i]], 1).flatten(0, 1))
            asked.append((i, torch.tensor([qs[b][2] for b in idx], device=cand.device)))
    d, full = judge.ask(texts, feats)
    sizes = [len(i) for i, _ in asked]
    return [(i, dg, fg, want)
            for (i, want), dg, fg in zip(asked, d.split(sizes), full.split(sizes))]


def vlm_loss(judge, reference, edited, instructions, types, objects=None, ref_features=None,
             temperature=1.0, full_vocab=False, slots=(0, 1), weights=None):
    """L_vlm = mean over samples and their two questions of -log sigmoid(+-(l_yes - l_no)),
    i.e. binary cross-entropy on the yes/no logits (full_vocab=True: cross-entropy over the whole
    vocabulary, the paper's ablation); temperature scales the logits (docs/method.md, the ramp).
    reference, edited: (B, 3, H, W) in [-1, 1]; types: each sample's edit type; objects: each
    removal's object (None: read off the instruction). slots: which of the two questions to ask
    ((0,) drops the identity question, an ablation); weights: B factors, one per sample (None: 1),
    e.g. one per edit type."""
    losses = []
    if weights is not None:
        weights = torch.as_tensor(weights, dtype=torch.float32, device=edited.device)
    for idx, d, full, want in answer_logits(judge, reference, edited, instructions, types, objects,
                                          ref_features, slots):
        if full_vocab:
            target = torch.where(want, judge.yes_id, judge.no_id)
            losses.append(F.cross_entropy(full * temperature, target, reduction="none"))
        else:
            losses.append(-F.logsigmoid((want.float() * 2 - 1) * d * temperature))
        if weights is not None:
            losses[-1] = losses[-1] * weights[idx]
    return torch.cat(losses).mean()
