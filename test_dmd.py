"""DMD's known answer: it moves a generator onto a target Gaussian:  python -m pytest -q test_dmd.py"""
import torch

import dmd


def _gaussian_v(mu, std):
    """Exact rectified-flow velocity for data N(mu, std^2) (per dimension):
    E[x0 | x_t] = mu + (1-t) std^2 / ((1-t)^2 std^2 + t^2) (x_t - (1-t) mu), v = (x_t - x0) / t."""
    def v(x_t, t):
        t = t.view(-1, 1)
        s2 = std ** 2
        x0 = mu + (1 - t) * s2 / ((1 - t) ** 2 * s2 + t ** 2) * (x_t - (1 - t) * mu)
        return (x_t - x0) / t
    return v


def _run_dmd(swap_real_for_fake, steps=400):
    torch.manual_seed(0)
    target_mu, target_std = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.5])
    a = torch.ones(2, requires_grad=True)   # generator: x = a * z + b, starts at N(0, 1)
    b = torch.zeros(2, requires_grad=True)
    opt = torch.optim.Adam([a, b], lr=0.02)
    for _ in range(steps):
        x = a * torch.randn(256, 2) + b
        fake = _gaussian_v(b.detach(), a.detach().abs())  # the exact score of the generator
        real = fake if swap_real_for_fake else _gaussian_v(target_mu, target_std)
        # dmd_loss works on image-shaped tensors: view (B, 2) as (B, 2, 1, 1)
        loss = dmd.dmd_loss(x.view(-1, 2, 1, 1), lambda xt, t: real(xt.view(-1, 2), t).view(xt.shape),
                            lambda xt, t: fake(xt.view(-1, 2), t).view(xt.shape))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return b.detach(), a.detach().abs(), target_mu, target_std


def test_dmd_moves_generator_to_target_gaussian():
    mu, std, target_mu, target_std = _run_dmd(False)
    assert torch.allclose(mu, target_mu, rtol=0.1, atol=0.1), mu
    assert torch.allclose(std, target_std, rtol=0.1), std


def test_dmd_does_not_move_when_real_equals_fake():
    mu, std, _, _ = _run_dmd(True, steps=50)
    assert torch.allclose(mu, torch.zeros(2)) and torch.allclose(std, torch.ones(2))


def test_the_empty_condition_from_an_empty_prompt_equals_captions_masked_to_cls():
    """train.py encodes CFG's null condition from "" (one token); it gives the real score the
    velocity that the captions with every token but [CLS] masked give (the mask is -1e4, so
    masked tokens weigh exactly 0)."""
    import model as M
    torch.manual_seed(0)
    transformer, text_encoder, tok = M.small_prior("random")
    captions = ["a red circle at the top left on a white background", "a blue square"]
    drop = torch.ones(2, dtype=torch.bool)
    masked = M.encode_text(text_encoder, tok, captions, drop)
    empty = M.encode_text(text_encoder, tok, ["", ""], drop)
    assert empty[0].shape[1] < masked[0].shape[1]
    cap = M.encode_text(text_encoder, tok, captions)
    x_t, t = torch.randn(2, 3, 32, 32), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        v_masked = dmd.real_velocity(transformer, x_t, t, *cap, *masked, 3.0)
        v_empty = dmd.real_velocity(transformer, x_t, t, *cap, *empty, 3.0)
    assert torch.allclose(v_masked, v_empty, atol=1e-5)
    assert not torch.allclose(v_empty, dmd.real_velocity(transformer, x_t, t, *cap, *cap, 3.0))
