"""Tests of the baselines (baselines.py): Flow-GRPO on tiny random models and toy policies, and
both baselines through train.py's loop:  python -m pytest -q test_baselines.py"""
import copy
import math
import random

import pytest
import torch

import baselines as grpo
import model as M
import toyworld as tw
import vlm_reward as V


@pytest.fixture(scope="module")
def generator():
    """The tiny preset's editor (model.small_prior + train.load_models with prior="random")."""
    torch.manual_seed(0)
    tok = tw.build_tokenizer()
    transformer, text_encoder = M.tiny_prior(len(tok), width=32, layers=1, text_width=32,
                                             text_layers=1)
    return M.Generator.from_prior(transformer, text_encoder, tok)


@pytest.fixture(scope="module")
def judge():
    torch.manual_seed(0)
    jt = V.judge_tokenizer()
    vlm = V.Qwen2_5_VLForConditionalGeneration(V.tiny_judge_config(jt, 32, 32, 1))
    return V.Judge(vlm.eval().requires_grad_(False), jt)


def edit_batch(n_groups, group_size, seed=0, types=None):
    """n_groups edits, each repeated group_size times (consecutive), as train.py would feed them."""
    rng = random.Random(seed)
    edits = [tw.random_edit(rng, "train", types[g] if types else None) for g in range(n_groups)]
    edits = [e for e in edits for _ in range(group_size)]
    return ([e.instruction for e in edits], tw.to_tensor([tw.render(e.reference) for e in edits]),
            [e.type for e in edits])


class PointMass(torch.nn.Module):
    """The exact velocity when all data is one point x0: v = (x_t - x0) / t."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, x_t, t, reference, text, mask):
        return (x_t - self.x0) / t.view(-1, 1, 1, 1)


class GaussianPolicy(torch.nn.Module):
    """A tiny linear "velocity model": the exact velocity for data N(m, s^2) per dimension,
    E[x0 | x_t] = m + (1-t) s^2 / ((1-t)^2 s^2 + t^2) (x_t - (1-t) m), v = (x_t - x0) / t,
    with the mean m learnable. Samples are (B, 2, 1, 1), the "images" of a 2-D world."""

    def __init__(self, s=0.3):
        super().__init__()
        self.m, self.s = torch.nn.Parameter(torch.zeros(2)), s

    def forward(self, x_t, t, reference, text, mask):
        m, t, s2 = self.m.view(1, 2, 1, 1), t.view(-1, 1, 1, 1), self.s ** 2
        x0 = m + (1 - t) * s2 / ((1 - t) ** 2 * s2 + t ** 2) * (x_t - (1 - t) * m)
        return (x_t - x0) / t


# ----------------------------------------------------------------------------- the SDE step

def test_sde_step_keeps_the_point_mass_marginal():
    """For data = one point x0 the true marginal is x_t ~ N((1-t) x0, t^2). Flow-GRPO's step
    keeps its mean exactly (mu is linear in x_t) and its variance up to O((t-s)^2); with the
    noise switched off it is the exact ODE, x_s = (1-s) x0 + s eps. A wrong sign of the score
    term would bias the variance at first order: 8% on the step below, against 0.2% here."""
    torch.manual_seed(0)
    x0 = torch.tensor([0.5, -0.3]).view(1, 2, 1, 1)
    oracle, t, s = PointMass(x0), 0.5, 0.48
    eps = torch.randn(200_000, 2, 1, 1)
    x_t = M.add_noise(x0.expand_as(eps), eps, torch.full((len(eps),), t))
    v = oracle(x_t, torch.full((len(eps),), t), None, None, None)
    assert torch.allclose(grpo.sde_mean(x_t, v, t, s, 0.0), (1 - s) * x0 + s * eps, atol=1e-6)
    sigma = grpo.sde_sigma(t, s, 0.7)
    x_s = grpo.sde_mean(x_t, v, t, s, sigma) + sigma * math.sqrt(t - s) * torch.randn_like(eps)
    assert torch.allclose(x_s.mean(0), (1 - s) * x0[0], atol=5e-3)
    assert abs(x_s.var(0).mean().item() / s ** 2 - 1) < 0.01


def test_rollout_tracks_the_point_mass_marginal():
    """The whole rollout (shifted schedule, t = 1 clip included): the mean at every recorded
    s is (1-s) x0, and the deterministic last step lands exactly on x0. The std is s only up
    to the discretisation: on a fine 48-step schedule (1 -> 0.06) it is 1.03-1.09 s by the
    exact recursion (the t = 1 step's bias stays however fine the grid); a wrong step std
    (sigma (t - s)) gives 0.19-0.76 s, a wrong score sign 1.4-10 s. (On the 4-step schedule,
    a = 0.7 inflates it 1.15/1.35/1.56x at s = .75/.5/.25: Flow-GRPO's SDE at few steps.)"""
    x0 = torch.tensor([0.5, -0.3]).view(1, 2, 1, 1)
    ref = torch.zeros(20_000, 2, 1, 1)
    out, traj = grpo.rollout(PointMass(x0), ref, None, None, shift=6.0,
                             rng=torch.Generator().manual_seed(0))
    assert traj.t[0] == 1 and traj.x_s.shape == (3, 20_000, 2, 1, 1)
    for k in range(3):
        s = traj.s[k].item()
        assert torch.allclose(traj.x_s[k].mean(0), (1 - s) * x0[0], atol=0.03), (k, s)
    assert torch.allclose(out, x0.expand_as(out), atol=1e-5)
    _, traj = grpo.rollout(PointMass(x0), ref[:10_000], None, None,
                           steps=[1 - i / 50 for i in range(48)],
                           rng=torch.Generator().manual_seed(1))
    ratio = traj.x_s.flatten(2).std(1).mean(1) / traj.s  # std / s at every step
    assert ((ratio > 1.0) & (ratio < 1.12)).all(), ratio


# ----------------------------------------------------------------------------- log-probs

def test_log_probs_reproduce_the_rollout_and_the_initial_copy_gives_zero_kl(generator):
    instructions, ref, _ = edit_batch(2, 2)
    text, mask = generator.condition(instructions)
    rng = torch.Generator().manual_seed(0)
    x0, traj = grpo.rollout(generator, ref, text, mask, rng=rng)
    assert x0.shape == ref.shape and traj.logp.shape == (3, 4) and not traj.logp.requires_grad
    logp, mu = grpo.log_probs(generator, traj, ref, text, mask)
    assert logp.requires_grad and mu.shape == traj.x_s.shape
    assert torch.allclose(torch.exp(logp - traj.logp), torch.ones(3, 4), atol=1e-4)
    with torch.no_grad():
        _, mu_ref = grpo.log_probs(copy.deepcopy(generator), traj, ref, text, mask)
    adv = torch.zeros(4)
    assert grpo.grpo_loss(logp, traj.logp, adv, kl_coef=1.0, mu_new=mu, mu_ref=mu_ref,
                          std=traj.std).item() == pytest.approx(0, abs=1e-6)


def test_grpo_gradient_reaches_the_generator(generator):
    instructions, ref, _ = edit_batch(2, 2, seed=1)
    text, mask = generator.condition(instructions)
    generator.zero_grad()
    rng = torch.Generator().manual_seed(1)
    _, traj = grpo.rollout(generator, ref, text, mask, rng=rng)
    logp, _ = grpo.log_probs(generator, traj, ref, text, mask)
    grpo.grpo_loss(logp, traj.logp, torch.tensor([1.0, -1.0, 1.0, -1.0])).backward()
    for part in (generator.transformer, generator.text_encoder):
        assert sum(p.grad.abs().sum() for p in part.parameters() if p.grad is not None) > 0
    # the reference's input channels, zero at init, get a gradient too
    assert generator.transformer.patch_embed.proj.weight.grad[:, 3:].abs().sum() > 0
    generator.zero_grad()


# ----------------------------------------------------------------------------- the loss

def test_clip_zeroes_the_gradient_only_on_the_clipped_side():
    ratio = torch.tensor([[1.5, 1.5, 0.5, 0.5, 1.1]])
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0])
    logp_new = torch.zeros(1, 5, requires_grad=True)
    grpo.grpo_loss(logp_new, -ratio.log(), adv, clip=0.2).backward()
    g = logp_new.grad[0]
    # r > 1 + clip with A > 0, r < 1 - clip with A < 0: already past the trust region, no push
    assert g[0] == 0 and g[2] == 0
    # the other side stays unclipped (PPO's pessimistic max): d/dlogp (-A r) / 5 = -A r / 5
    assert torch.allclose(g[[1, 3, 4]], -adv[[1, 3, 4]] * ratio[0, [1, 3, 4]] / 5)


def test_kl_term_pulls_the_mean_back_to_the_initial_model():
    torch.manual_seed(0)
    mu_ref = torch.randn(2, 3, 3, 4, 4)
    delta = 0.1 * torch.randn_like(mu_ref)
    mu_new = (mu_ref + delta).requires_grad_(True)
    std = torch.tensor([0.5, 0.25], dtype=torch.float64)
    loss = grpo.grpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3), kl_coef=0.1,
                          mu_new=mu_new, mu_ref=mu_ref, std=std)
    s2 = std.float().view(2, 1, 1, 1, 1) ** 2
    assert loss.item() == pytest.approx((0.1 * delta ** 2 / (2 * s2)).sum().item() / 6, rel=1e-5)
    loss.backward()
    assert torch.allclose(mu_new.grad, 0.1 * delta / s2 / 6, rtol=1e-4)


def test_group_advantages():
    torch.manual_seed(0)
    r = torch.cat([torch.rand(3 * 5), torch.full((5,), 0.7)])
    a = grpo.group_advantages(r, 5).view(4, 5)
    assert torch.allclose(a[:3].mean(1), torch.zeros(3), atol=1e-6)
    assert torch.allclose(a[:3].std(1, unbiased=False), torch.ones(3), atol=1e-3)
    assert torch.equal(a[3], torch.zeros(5))


# ----------------------------------------------------------------------------- the reward

def test_reward_is_the_judges_probability_of_the_expected_answers(judge):
    instructions, ref, types = edit_batch(2, 1, seed=2, types=["remove", "color"])
    edited = torch.rand(2, 3, 32, 32, requires_grad=True) * 2 - 1
    r = grpo.reward(judge, ref, edited, instructions, types)
    assert r.shape == (2,) and not r.requires_grad and ((r >= 0) & (r <= 1)).all()
    for b in range(2):  # mean over the two questions of exp(-L_vlm) of that question alone
        p = [math.exp(-V.vlm_loss(judge, ref[b:b + 1], edited[b:b + 1], instructions[b:b + 1],
                                  types[b:b + 1], slots=(q,)).item()) for q in (0, 1)]
        assert r[b].item() == pytest.approx(sum(p) / 2, abs=1e-5)


# ----------------------------------------------------------------------------- known answer

def test_grpo_raises_the_reward_of_a_toy_policy():
    """The sign check: a 2-D Gaussian policy rewarded for landing near a target region must
    move there under a few dozen GRPO updates (one update per rollout, as train.py does)."""
    torch.manual_seed(0)
    policy, target = GaussianPolicy(), torch.tensor([0.6, -0.4])
    opt = torch.optim.Adam(policy.parameters(), lr=0.03)
    rng = torch.Generator().manual_seed(0)
    ref = torch.zeros(64, 2, 1, 1)  # 8 groups of 8; the toy has no condition

    def reward(x0):
        return torch.exp(-((x0.flatten(1) - target) ** 2).sum(1) / (2 * 0.3 ** 2))

    def mean_reward():
        return reward(grpo.rollout(policy, torch.zeros(4096, 2, 1, 1), None, None,
                                   rng=torch.Generator().manual_seed(1))[0]).mean().item()

    before = mean_reward()
    for _ in range(40):
        x0, traj = grpo.rollout(policy, ref, None, None, rng=rng)
        adv = grpo.group_advantages(reward(x0), 8)
        logp, _ = grpo.log_probs(policy, traj, ref, None, None)
        loss = grpo.grpo_loss(logp, traj.logp, adv)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = mean_reward()
    assert after > before + 0.2, (before, after)
    assert (policy.m.detach() - target).norm() < 0.5 * target.norm(), policy.m
