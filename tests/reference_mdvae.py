"""Straightforward step-by-step MDVAE / DSAE: the ORACLE for the efficient time loop.

Everything is computed frame by frame in plain Python loops (projections, both directions of the
static GRU written out by hand, every chain's GRU cell, posterior, prior, decoder, KL and NLL per
step), reading the parameters from an efficient model so that the same weights and the same noise
must give the same ELBO terms and latents. Also used by bench/bench_mdvae.py as the baseline.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from avmdvae.models.dsae import DSAE
from avmdvae.models.mdvae import MDVAE

LOG_2PI = math.log(2 * math.pi)


def _gru_step(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
    """One GRU step written out (gate order r, z, n as in torch)."""
    H = h.shape[-1]
    gi = x @ w_ih.t() + b_ih
    gh = h @ w_hh.t() + b_hh
    r = torch.sigmoid(gi[:, :H] + gh[:, :H])
    u = torch.sigmoid(gi[:, H : 2 * H] + gh[:, H : 2 * H])
    n = torch.tanh(gi[:, 2 * H :] + r * gh[:, 2 * H :])
    return (1 - u) * n + u * h


def _mlp_gauss(head, x: Tensor) -> tuple[Tensor, Tensor]:
    o = torch.tanh(x @ head.fc1.weight.t() + head.fc1.bias) @ head.fc2.weight.t() + head.fc2.bias
    z = head.out_dim
    return o[:, :z], o[:, z:]


def _kl(mq, lvq, mp, lvp) -> Tensor:
    return 0.5 * (lvp - lvq + (torch.exp(lvq) + (mq - mp) ** 2) / torch.exp(lvp) - 1)


def _nll(x, mean, logvar) -> Tensor:
    return 0.5 * ((x - mean) ** 2 / torch.exp(logvar) + logvar + LOG_2PI)


def _static_w(static, frames: list[Tensor], eps_w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Bidirectional GRU over per-frame inputs, step by step; returns (w, mean, logvar)."""
    gru = static.gru
    B, H = frames[0].shape[0], gru.hidden_size
    hf = frames[0].new_zeros(B, H)
    for e in frames:
        hf = _gru_step(e, hf, gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)
    hb = frames[0].new_zeros(B, H)
    for e in reversed(frames):
        hb = _gru_step(
            e,
            hb,
            gru.weight_ih_l0_reverse,
            gru.weight_hh_l0_reverse,
            gru.bias_ih_l0_reverse,
            gru.bias_hh_l0_reverse,
        )
    o = torch.cat([hf, hb], 1) @ static.head.weight.t() + static.head.bias
    Dw = o.shape[1] // 2
    mean, logvar = o[:, :Dw], o[:, Dw:]
    return mean + torch.exp(0.5 * logvar) * eps_w, mean, logvar


def _chain_params(chains, c: int):
    cell = chains.cells[c]
    return cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh


def _decode_step(dec, w: Tensor, z: Tensor) -> Tensor:
    return (
        torch.tanh(torch.cat([w, z], 1) @ dec.fc1.weight.t() + dec.fc1.bias) @ dec.fc2.weight.t()
        + dec.fc2.bias
    )


def reference_mdvae(
    model: MDVAE, xa: Tensor, xv: Tensor, noise: dict[str, Tensor], beta=1.0, kl_weight=1.0
) -> dict:
    """Step-by-step forward. Returns dict: loss, elbo, terms (same keys as the model), latents
    (w, zav, za, zv), post/prior (name -> (mean, logvar)), recon (audio, visual)."""
    B, T = xa.shape[:2]
    betas = {
        k: float(beta.get(k, 1.0)) if isinstance(beta, dict) else float(beta)
        for k in ("w", "zav", "za", "zv")
    }
    ea = [torch.tanh(xa[:, t] @ model.proj_a.fc.weight.t() + model.proj_a.fc.bias) for t in range(T)]
    ev = [torch.tanh(xv[:, t] @ model.proj_v.fc.weight.t() + model.proj_v.fc.bias) for t in range(T)]
    eav = [torch.cat([a, v], 1) for a, v in zip(ea, ev, strict=True)]
    w, w_mean, w_logvar = _static_w(model.static, eav, noise["w"])
    chains = model.chains
    names = ("zav", "za", "zv")
    H = chains.hidden
    h = {n: xa.new_zeros(B, H) for n in names}
    zprev = {n: xa.new_zeros(B, chains.specs[i].z_dim) for i, n in enumerate(names)}
    lists = {k: {n: [] for n in names} for k in ("z", "pm", "plv", "qm", "qlv")}
    kl = {n: xa.new_zeros(B) for n in names}
    rec = {"audio": xa.new_zeros(B), "visual": xv.new_zeros(B)}
    xa_hat, xv_hat = [], []
    for t in range(T):
        z_t = {}
        for i, n in enumerate(names):
            h[n] = _gru_step(zprev[n], h[n], *_chain_params(chains, i))
            feat = {"zav": eav[t], "za": ea[t], "zv": ev[t]}[n]
            parts = [feat, w, h[n]] + ([z_t["zav"]] if n != "zav" else [])
            qm, qlv = _mlp_gauss(chains.post[i], torch.cat(parts, 1))
            pm, plv = _mlp_gauss(chains.prior[i], h[n])
            z_t[n] = qm + torch.exp(0.5 * qlv) * noise[n][:, t]
            kl[n] = kl[n] + _kl(qm, qlv, pm, plv).sum(1)
            for k, v in (("z", z_t[n]), ("pm", pm), ("plv", plv), ("qm", qm), ("qlv", qlv)):
                lists[k][n].append(v)
        zprev = z_t
        xa_t = _decode_step(model.dec_a, w, torch.cat([z_t["zav"], z_t["za"]], 1))
        xv_t = _decode_step(model.dec_v, w, torch.cat([z_t["zav"], z_t["zv"]], 1))
        rec["audio"] = rec["audio"] + _nll(xa[:, t], xa_t, model.obs_logvar_a).sum(1)
        rec["visual"] = rec["visual"] + _nll(xv[:, t], xv_t, model.obs_logvar_v).sum(1)
        xa_hat.append(xa_t)
        xv_hat.append(xv_t)
    kl_w = (0.5 * (torch.exp(w_logvar) + w_mean**2 - 1 - w_logvar)).sum(1)
    terms = {"rec_audio": rec["audio"].mean(), "rec_visual": rec["visual"].mean(), "kl_w": kl_w.mean()}
    terms.update({f"kl_{n}": kl[n].mean() for n in names})
    nll = terms["rec_audio"] + terms["rec_visual"]
    kls = terms["kl_w"] + sum(terms[f"kl_{n}"] for n in names)
    weighted = betas["w"] * terms["kl_w"] + sum(betas[n] * terms[f"kl_{n}"] for n in names)
    st = {k: {n: torch.stack(v, 1) for n, v in d.items()} for k, d in lists.items()}
    return {
        "loss": (nll + kl_weight * weighted) / T,
        "elbo": -(nll + kls),
        "terms": terms,
        "latents": {"w": w, **st["z"]},
        "post": {"w": (w_mean, w_logvar), **{n: (st["qm"][n], st["qlv"][n]) for n in names}},
        "prior": {n: (st["pm"][n], st["plv"][n]) for n in names},
        "recon": {"audio": torch.stack(xa_hat, 1), "visual": torch.stack(xv_hat, 1)},
    }


def reference_dsae(model: DSAE, x: Tensor, noise: dict[str, Tensor], beta=1.0, kl_weight=1.0) -> dict:
    """Step-by-step DSAE forward; same return layout as reference_mdvae (latents w, z)."""
    B, T = x.shape[:2]
    betas = {k: float(beta.get(k, 1.0)) if isinstance(beta, dict) else float(beta) for k in ("w", "z")}
    e = [torch.tanh(F.linear(x[:, t], model.proj.fc.weight, model.proj.fc.bias)) for t in range(T)]
    w, w_mean, w_logvar = _static_w(model.static, e, noise["w"])
    chains = model.chains
    h = x.new_zeros(B, chains.hidden)
    zprev = x.new_zeros(B, model.z_dim)
    kl = x.new_zeros(B)
    rec = x.new_zeros(B)
    zs, qms, qlvs, pms, plvs, xs = [], [], [], [], [], []
    for t in range(T):
        h = _gru_step(zprev, h, *_chain_params(chains, 0))
        qm, qlv = _mlp_gauss(chains.post[0], torch.cat([e[t], w, h], 1))
        pm, plv = _mlp_gauss(chains.prior[0], h)
        z = qm + torch.exp(0.5 * qlv) * noise["z"][:, t]
        kl = kl + _kl(qm, qlv, pm, plv).sum(1)
        x_t = _decode_step(model.dec, w, z)
        rec = rec + _nll(x[:, t], x_t, model.obs_logvar).sum(1)
        zprev = z
        for lst, v in ((zs, z), (qms, qm), (qlvs, qlv), (pms, pm), (plvs, plv), (xs, x_t)):
            lst.append(v)
    kl_w = (0.5 * (torch.exp(w_logvar) + w_mean**2 - 1 - w_logvar)).sum(1)
    terms = {f"rec_{model.modality}": rec.mean(), "kl_w": kl_w.mean(), "kl_z": kl.mean()}
    nll = terms[f"rec_{model.modality}"]
    return {
        "loss": (nll + kl_weight * (betas["w"] * terms["kl_w"] + betas["z"] * terms["kl_z"])) / T,
        "elbo": -(nll + terms["kl_w"] + terms["kl_z"]),
        "terms": terms,
        "latents": {"w": w, "z": torch.stack(zs, 1)},
        "post": {"w": (w_mean, w_logvar), "z": (torch.stack(qms, 1), torch.stack(qlvs, 1))},
        "prior": {"z": (torch.stack(pms, 1), torch.stack(plvs, 1))},
        "recon": {model.modality: torch.stack(xs, 1)},
    }
