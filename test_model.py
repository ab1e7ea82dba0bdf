"""The generator: it starts as the prior, and the unroll carries gradients through both of its
steps:  python -m pytest -q test_model.py"""
import pytest
import torch

import model as M
import train
from config import PRESETS, Config


@pytest.fixture(scope="module")
def tiny_models():
    cfg = Config(**PRESETS["tiny"])
    torch.manual_seed(0)
    return train.load_models(cfg, "cpu")


def test_unroll_gradient_flows_through_both_steps(tiny_models):
    generator = tiny_models.generator
    outputs = []

    class Recorder(torch.nn.Module):
        def forward(self, *a):
            out = generator(*a)
            out.retain_grad()
            outputs.append(out)
            return out

    ref = torch.rand(2, 3, 32, 32) * 2 - 1
    ids, mask = generator.condition(["make the red circle blue"] * 2)
    generator.zero_grad()
    x = M.unroll(Recorder(), ref, ids, mask, k=2)
    x.square().mean().backward()
    assert len(outputs) == 2
    assert all(o.grad is not None and o.grad.abs().sum() > 0 for o in outputs)
    assert generator.transformer.proj_out.weight.grad.abs().sum() > 0
    # the zero-initialised reference channels receive gradient too
    assert generator.transformer.patch_embed.proj.weight.grad[:, 3:].abs().sum() > 0


def test_generator_starts_as_the_prior(tiny_models):
    generator, real_score = tiny_models.generator, tiny_models.real_score
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([0.3, 0.8])
    ids, mask = generator.condition(["top left red circle"] * 2)
    text = generator.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    y = torch.randn_like(x)
    with torch.no_grad():
        for a in (0.0, 0.5):  # zero init: the prior itself; a: the prior on (1 - a) x_t + a y
            fresh = M.Generator.from_prior(real_score, generator.text_encoder,
                                           generator.tokenizer, ref_init=a)
            assert torch.allclose(fresh(x, t, y, ids, mask),
                                  M.velocity(real_score, (1 - a) * x + a * y, t, text, mask),
                                  atol=1e-5)
        assert not torch.allclose(fresh(x, t, y, ids, mask), M.velocity(real_score, x, t, text,
                                                                        mask), atol=1e-3)
