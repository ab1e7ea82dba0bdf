"""Distribution matching distillation (DMD), NP-Edit's second loss (docs/method.md, "Loss 2: DMD").

Two copies of the pretrained text-to-image prior, both conditioned on the caption of the *edited*
image c_x (never on the reference image):
  real score: frozen, with classifier-free guidance;
  fake score A_phi: trained online with flow matching on the generator's detached outputs, so it
                    tracks the generator's current output distribution.
At a generated x the KL gradient is approximated by the difference of their denoised estimates:
  t ~ U[0.02, 0.98], x_t = (1 - t) x + t eps,
  grad = ((x - x0_real) - (x - x0_fake)) / mean|x - x0_real|,
  L_dmd = 0.5 || x - stopgrad(x - grad) ||^2        (so dL/dx = grad).
"""
import torch
import torch.nn.functional as F

from model import add_noise, velocity, x0_from_v


def real_velocity(real_score, x_t, t, text, mask, null_text, null_mask, cfg):
    """Frozen prior with CFG: v = v_uncond + cfg (v_cond - v_uncond); cfg may be per sample."""
    B, L = x_t.shape[0], max(text.shape[1], null_text.shape[1])  # pad both to one length
    text, null_text = (F.pad(h, (0, 0, 0, L - h.shape[1])) for h in (text, null_text))
    mask, null_mask = (F.pad(m, (0, L - m.shape[1])) for m in (mask, null_mask))
    v = velocity(real_score, torch.cat([x_t, x_t]), torch.cat([t, t]),
                 torch.cat([text, null_text]), torch.cat([mask, null_mask]))
    v_c, v_u = v[:B], v[B:]
    cfg = torch.as_tensor(cfg, dtype=x_t.dtype, device=x_t.device).view(-1, 1, 1, 1)
    return v_u + cfg * (v_c - v_u)


def dmd_loss(x, real_v, fake_v, t_min=0.02, t_max=0.98, rng=None):
    """L_dmd at generated images x (B, C, H, W). real_v, fake_v: callables (x_t, t) -> velocity.
    Everything but the last line runs without grad and in fp32: the gradient is a small
    difference of two large denoised estimates, which bf16 would drown."""
    with torch.no_grad():
        x32 = x.detach().float()
        t = torch.rand(x.shape[0], generator=rng, device=x.device) * (t_max - t_min) + t_min
        eps = torch.randn(x32.shape, generator=rng, device=x.device)
        x_t = add_noise(x32, eps, t)
        x0_real = x0_from_v(x_t, real_v(x_t, t).float(), t)  # v -> x0 explicitly (docs/method.md)
        x0_fake = x0_from_v(x_t, fake_v(x_t, t).float(), t)
        norm = (x32 - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True)
        grad = torch.nan_to_num(((x32 - x0_real) - (x32 - x0_fake)) / norm)
    return 0.5 * F.mse_loss(x.float(), (x32 - grad).detach(), reduction="mean")


def fake_score_loss(fake_score, x, text, mask, rng=None):
    """Flow matching of the fake score on detached generator outputs x:
    || v_phi(x_t, t, c_x) - (eps - x) ||^2 with t ~ U[0, 1]."""
    x = x.detach()
    t = torch.rand(x.shape[0], generator=rng, device=x.device)
    eps = torch.randn(x.shape, generator=rng, device=x.device)
    return F.mse_loss(velocity(fake_score, add_noise(x, eps, t), t, text, mask), eps - x)
