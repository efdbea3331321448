"""The models' two time loops, each ONE autograd node with a hand-written backward.

`BiGRUFinal` is the bidirectional GRU of the static encoder (only its final states are used);
`chains_loop` advances the dynamical chains of `DynamicalChains` (mdvae.py). Under autograd such a loop
costs ~25 small ops per frame forward and ~50 backward, and at the model's sizes the per-op dispatch
(5-10 us each) and fresh small tensors dominate. Here the forward runs without autograd into
preallocated (.., T, ..) buffers and the backward loops over time with a few ops per frame: the
derivative coefficients that do not depend on the incoming gradient are computed in the forward (per
frame, while the operands are in cache: batched passes over the (C, T, B, H) buffers cost more here than
the ops they save), and every weight gradient is formed after the loop with one matmul over all T*B rows.
For contiguous float32 CPU tensors both loops run in C instead (recurrence.c, loaded by native.py), filling
the same buffers, with the batch rows split over torch's threads; the torch loops here are the reference and
the fallback.

Chains notation (C chains, chain 0 the root, K = C - 1 children of the root; GRU state H, posterior hidden P,
z_max = Zm, root z size Z0, F = H + Zm + 1). Per frame t and chain c, with hz_{t-1} = [h_{t-1}, z_{t-1}, 1]:
    G_t  = hz_{t-1} @ w_big                         (C, B, 4H) = [gh_n | r, u pre-activations | gi_n]
    r, u = sigmoid(G_t[H:3H]);  n = tanh(gi_n + r * gh_n);  h_t = n + u * (h_{t-1} - n)
    pre  = a_t + h_t @ w_ph                         (C, B, P) posterior fc1 (a_t: feature/w part)
    root: o_t = tanh(pre[0]) @ w_root.T + b_root = [mean, logvar];  z_t = mean + exp(logvar / 2) eps
    kids: pre[1:] += z^root_t @ w_pz;  o_t = tanh(pre[1:]) @ w_kid + b_kid;  z_t as for the root
w_big packs each GRU's state weights (rows :H, columns :3H), input weights (rows H:H+Zm, columns H:) and
biases (last row, against the constant 1 in hz): one bmm per frame for the three GRUs without a bias
copy, one bmm for the gradients of both h_{t-1} and z_{t-1}, and the column order keeps the state part
and the input part of the weight gradient contiguous (two exact-size matmuls after the loop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from avmdvae.models import native


class BiGRUFinal(torch.autograd.Function):
    """Final states of a bidirectional GRU (nn.GRU's layouts and gate order r, z, n) from its input products.

    forward(gi_f, gi_b (B, T, 3H) = x @ W_ih^T of each direction, without bias; w_hh_f, w_hh_b (3H, H);
            b_ih_f, b_ih_b, b_hh_f, b_hh_b (3H,); for_backward) -> h_n (2, B, H): the forward
    direction's last state and the backward direction's state after reading the first frame.
    One autograd node for the whole recurrence, both directions advanced together, the biases added in
    the loop (no broadcast copy of b_ih over all frames, and its gradient is mostly b_hh's) and every
    gradient returned in its parameter's own layout. With h' = n + z (h - n), n = tanh(a_n),
    a_n = gi_n + r gh_n, r = sig(a_r), z = sig(a_z), every derivative factor that does not depend on the
    incoming gradient is formed in the forward step while its operands are in cache, in five slots per unit:
        [c_r, c_z, c_hn, c_n, z] = [c_n gh_n r (1 - r), (h - n) z (1 - z), c_n r, c_n, z], c_n = (1 - z)(1 - n^2)
    so that a backward step is one multiply (dh times the slots = [d a_r, d a_z, d gh_n, d a_n, dh z]) and
    one matmul (dh_prev = dh z + d gh W_hh; slots 0-2 are d gh in gate order). Weight and bias gradients
    are one matmul each over all frames afterwards.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        gi_f: Tensor,
        gi_b: Tensor,
        w_hh_f: Tensor,
        w_hh_b: Tensor,
        b_ih_f: Tensor,
        b_ih_b: Tensor,
        b_hh_f: Tensor,
        b_hh_b: Tensor,
        for_backward: bool,
    ) -> Tensor:
        B, T, H3 = gi_f.shape
        H = H3 // 3
        # per direction [b_ih + b_hh for r and z, b_ih n, b_hh n] (2, 4H)
        bias = torch.stack(
            [
                torch.cat([bi[: 2 * H] + bh[: 2 * H], bi[2 * H :], bh[2 * H :]])
                for bi, bh in ((b_ih_f, b_hh_f), (b_ih_b, b_hh_b))
            ]
        )
        hs = gi_f.new_empty(2, T + 1, B, H)  # hs[:, s] = state entering step s (direction-major for d_w)
        hs[:, 0].zero_()
        coef = gi_f.new_empty(2, T, B, 5, H) if for_backward else None
        w_hh_t = torch.stack([w_hh_f.t(), w_hh_b.t()])  # (2, H, 3H): a transposed gemm operand is slower
        lib = native.usable(gi_f, gi_b, w_hh_t, bias)
        if lib is not None:
            scratch = gi_f.new_empty(2, B, H3)  # each C thread uses the rows of its direction and batch slice
            bufs = (gi_f, gi_b, w_hh_t, bias, hs, coef, scratch)
            lib.avm_bigru_forward(T, B, H, *(None if x is None else x.data_ptr() for x in bufs))
        else:  # the PyTorch loop: reference and fallback
            b_rz, b_in, b_hn = bias[:, None, : 2 * H], bias[:, None, 2 * H : 3 * H], bias[:, None, 3 * H :]
            for s in range(T):
                h = hs[:, s]
                g_in = torch.stack([gi_f[:, s], gi_b[:, T - 1 - s]])  # (2, B, 3H), processing order
                gh = torch.bmm(h, w_hh_t)
                a_rz = g_in[..., : 2 * H] + gh[..., : 2 * H] + b_rz
                r = a_rz[..., :H].sigmoid_()
                # z straight into its backward slot (a strided copy afterwards costs more than the sigmoid)
                z = a_rz[..., H:].sigmoid_() if coef is None else torch.sigmoid(a_rz[..., H:], out=coef[:, s, :, 4])
                ghn = gh[..., 2 * H :] + b_hn
                n = torch.addcmul(g_in[..., 2 * H :] + b_in, r, ghn).tanh_()
                h_minus_n = h - n
                torch.addcmul(n, z, h_minus_n, out=hs[:, s + 1])
                if coef is not None:
                    c = coef[:, s]
                    one_minus_z = 1.0 - z
                    c_n = torch.addcmul(one_minus_z, one_minus_z * n, n, value=-1.0, out=c[:, :, 3])
                    c_hn = torch.mul(c_n, r, out=c[:, :, 2])
                    t = c_hn * ghn
                    torch.addcmul(t, t, r, value=-1.0, out=c[:, :, 0])
                    t = h_minus_n * z
                    torch.addcmul(t, t, z, value=-1.0, out=c[:, :, 1])
        if coef is not None:
            ctx.save_for_backward(w_hh_f, w_hh_b, hs, coef)
        return hs[:, T].clone()

    @staticmethod
    def backward(ctx: FunctionCtx, dh_n: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        w_hh_f, w_hh_b, hs, coef = ctx.saved_tensors  # type: ignore[attr-defined]
        _, T, B, _, H = coef.shape
        dgi = coef.new_empty(2, B, T, 3 * H)  # per direction, frames in time order
        dgh = coef.new_empty(2, T, B, 3 * H)  # per direction, frames in processing order (as hs)
        dh = dh_n.to(coef.dtype, copy=True).contiguous()
        lib = native.usable(coef, w_hh_f, w_hh_b)
        if lib is not None:
            bufs = (coef, w_hh_f, w_hh_b, dh, dgh, dgi[0], dgi[1])
            lib.avm_bigru_backward(T, B, H, *(x.data_ptr() for x in bufs))
        else:
            w_hh = torch.stack([w_hh_f, w_hh_b])  # (2, 3H, H)
            for s in range(T - 1, -1, -1):
                p = (dh[:, :, None] * coef[:, s]).view(2, B, 5 * H)
                dgh[:, s] = p[..., : 3 * H]
                for d, t in ((0, s), (1, T - 1 - s)):
                    dgi[d, :, t, : 2 * H] = p[d, :, : 2 * H]
                    dgi[d, :, t, 2 * H :] = p[d, :, 3 * H : 4 * H]
                if s:
                    dh = torch.baddbmm(p[..., 4 * H :], p[..., : 3 * H], w_hh)
        TB = T * B
        dgh_all = dgh.view(2, TB, 3 * H)
        d_w = torch.bmm(dgh_all.transpose(1, 2), hs[:, :T].reshape(2, TB, H))  # (2, 3H, H)
        ones = dgh.new_ones(2, 1, TB)
        d_b_ih = torch.bmm(ones, dgi.view(2, TB, 3 * H))[:, 0]  # (2, 3H)
        d_b_hh = torch.cat([d_b_ih[:, : 2 * H], torch.bmm(ones, dgh_all[..., 2 * H :])[:, 0]], -1)
        return dgi[0], dgi[1], d_w[0], d_w[1], d_b_ih[0], d_b_ih[1], d_b_hh[0], d_b_hh[1], None


class ChainsLoop(torch.autograd.Function):
    """See the module docstring. Inputs (all in one dtype):

    a (C, T, B, P) posterior fc1 feature/w part incl. bias; eps (C, T, B, Zm) noise (zero padded);
    hz0 (C, B, H + Zm) initial [h, z]; w_big (C, H + Zm + 1, 4H); w_ph (C, H, P);
    w_root (2 Z0, P), b_root (2 Z0,) root fc2; w_pz (Z0, K P) root sample -> children's fc1;
    w_kid (K, P, 2 Zm), b_kid (K, 1, 2 Zm) children's fc2 (mean | logvar halves padded to Zm).
    w_pz, w_kid, b_kid are None when C = 1. grad: compute and save what the backward needs.
    Outputs: hs (C, T, B, H) states h_t, zs (C, T, B, Zm) samples, o_root (T, B, 2 Z0),
    o_kid (K, T, B, 2 Zm) (both [mean | logvar]). hs and zs are views of one buffer.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        a: Tensor,
        eps: Tensor,
        hz0: Tensor,
        w_big: Tensor,
        w_ph: Tensor,
        w_root: Tensor,
        b_root: Tensor,
        w_pz: Tensor | None,
        w_kid: Tensor | None,
        b_kid: Tensor | None,
        grad: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        C, T, B, P = a.shape
        H, Zm = w_ph.shape[1], eps.shape[-1]
        Z0, K = w_root.shape[0] // 2, C - 1
        hz = a.new_empty(C, T + 1, B, H + Zm + 1)  # [h_t, z_t, 1]; index 0 = initial state
        hz[:, 0, :, :-1] = hz0
        hz[..., -1] = 1.0
        ru = a.new_empty(C, T, B, 2 * H)
        act = a.new_empty(C, T, B, P)  # tanh of the posterior fc1
        std = a.new_empty(C, T, B, Zm)
        o_root = a.new_empty(T, B, 2 * Z0)
        o_kid = a.new_empty(K, T, B, 2 * Zm)
        # d G_t = dh_t * k4_t with blocks [gh_n, r, u, gi_n]; tanh' of the heads
        k4 = a.new_empty(C, T, B, 4, H) if grad else None
        dact = a.new_empty(C, T, B, P) if grad else None
        if Z0 < Zm:  # the root's padded z / std columns are never written
            hz[0, 1:, :, H + Z0 : H + Zm] = 0
            std[0, ..., Z0:] = 0
        # The logvar halves of the output layers are pre-scaled by 1/2 so that exp() of the output is
        # the std (one op less per head and frame); logvar = 2 * that, once after the torch loop (per row in
        # the C one). Exact: scaling by a power of two commutes with rounding.
        w_root_s = w_root.t().contiguous()  # (P, 2 Z0)
        w_root_s[:, Z0:] *= 0.5
        b_root_s = b_root.clone()
        b_root_s[Z0:] *= 0.5
        w_kid_s = b_kid_s = w_pz_k = None
        if K:
            assert w_pz is not None and w_kid is not None and b_kid is not None
            w_kid_s = w_kid.clone()
            w_kid_s[..., Zm:] *= 0.5
            b_kid_s = b_kid.clone()
            b_kid_s[..., Zm:] *= 0.5
            w_pz_k = w_pz.view(Z0, K, P).transpose(0, 1).contiguous()  # (K, Z0, P)
        kid_w = [x for x in (w_kid_s, b_kid_s, w_pz_k) if x is not None]
        lib = native.usable(a, eps, w_big, w_ph, w_root_s, b_root_s, *kid_w)
        if lib is not None:  # the same buffers filled by one C call (n and G are not stored)
            bufs = (a, eps, hz, w_big, w_ph, w_root_s, b_root_s, w_kid_s, b_kid_s, w_pz_k)
            bufs += (ru, act, std, o_root, o_kid, k4, dact, a.new_empty(B, 4 * H))
            lib.avm_chains_forward(C, T, B, H, P, Zm, Z0, *(None if x is None else x.data_ptr() for x in bufs))
        else:
            g = a.new_empty(C, T, B, 4 * H)
            n = a.new_empty(C, T, B, H)
            # per-frame views, made once (unbind is one call for all frames; slicing in the loop is not free)
            hz_v, g_v = hz.unbind(1), g.unbind(1)
            h_v = hz[..., :H].unbind(1)
            z0_v = hz[0, :, :, H : H + Z0].unbind(0)
            zk_v = hz[1:, :, :, H : H + Zm].unbind(1)
            ghn_v, gru_v, gin_v = g[..., :H].unbind(1), g[..., H : 3 * H].unbind(1), g[..., 3 * H :].unbind(1)
            ru_v, r_v, u_v, n_v = ru.unbind(1), ru[..., :H].unbind(1), ru[..., H:].unbind(1), n.unbind(1)
            a_v, act_v, act0_v, actk_v = a.unbind(1), act.unbind(1), act[0].unbind(0), act[1:].unbind(1)
            s0_v, sk_v = std[0, ..., :Z0].unbind(0), std[1:].unbind(1)
            e0_v, ek_v = eps[0, ..., :Z0].unbind(0), eps[1:].unbind(1)
            or_v, orm_v, ors_v = o_root.unbind(0), o_root[..., :Z0].unbind(0), o_root[..., Z0:].unbind(0)
            ok_v, okm_v, oks_v = o_kid.unbind(1), o_kid[..., :Zm].unbind(1), o_kid[..., Zm:].unbind(1)
            if grad:
                assert k4 is not None and dact is not None
                kg_v, kr_v, ku_v, kn_v = (k4[..., i, :].unbind(1) for i in range(4))
                dact_v = dact.unbind(1)
                one = a.new_ones(())
            for t in range(T):
                torch.bmm(hz_v[t], w_big, out=g_v[t])
                r, u = r_v[t], u_v[t]
                torch.sigmoid(gru_v[t], out=ru_v[t])
                torch.tanh(torch.addcmul(gin_v[t], r, ghn_v[t]), out=n_v[t])
                h = torch.lerp(n_v[t], h_v[t], u, out=h_v[t + 1])  # n + u * (h_prev - n)
                pre = torch.baddbmm(a_v[t], h, w_ph)  # (C, B, P)
                torch.addmm(b_root_s, torch.tanh(pre[0], out=act0_v[t]), w_root_s, out=or_v[t])
                z0 = torch.addcmul(orm_v[t], torch.exp(ors_v[t], out=s0_v[t]), e0_v[t], out=z0_v[t + 1])
                if K:
                    pk = pre[1:].baddbmm_(z0.expand(K, B, Z0), w_pz_k)
                    torch.baddbmm(b_kid_s, torch.tanh(pk, out=actk_v[t]), w_kid_s, out=ok_v[t])
                    torch.addcmul(okm_v[t], torch.exp(oks_v[t], out=sk_v[t]), ek_v[t], out=zk_v[t + 1])
                if grad:
                    omu = 1.0 - u
                    kn = torch.mul(torch.addcmul(one, n_v[t], n_v[t], value=-1.0), omu, out=kn_v[t])  # (1-u)(1-n^2)
                    kg = torch.mul(kn, r, out=kg_v[t])  # * r
                    kr = torch.mul(kg, ghn_v[t], out=kr_v[t])
                    kr.addcmul_(kr, r, value=-1.0)  # * gh_n * (1 - r)
                    ku = torch.mul(h_v[t] - n_v[t], u, out=ku_v[t])
                    ku.mul_(omu)  # (h_prev - n) u (1 - u)
                    torch.addcmul(one, act_v[t], act_v[t], value=-1.0, out=dact_v[t])
            o_root[..., Z0:] *= 2.0
            o_kid[..., Zm:] *= 2.0
        if grad:
            ctx.save_for_backward(hz, k4, ru, dact, act, std, eps, w_big, w_ph, w_root, w_pz, w_kid)
        return hz[:, 1:, :, :H], hz[:, 1:, :, H : H + Zm], o_root, o_kid

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: FunctionCtx, d_hs: Tensor, d_zs: Tensor, d_root: Tensor, d_kid: Tensor
    ) -> tuple[Tensor | None, ...]:
        hz, k4, ru, dact, act, std, eps, w_big, w_ph, w_root, w_pz, w_kid = ctx.saved_tensors  # type: ignore[attr-defined]
        C, T, B, P = act.shape
        H, Zm = w_ph.shape[1], eps.shape[-1]
        Z0, K = w_root.shape[0] // 2, C - 1
        TB = T * B
        u = ru[..., H:]
        # dhz_t = [dh_t, dz_t] from outside and from G_{t+1}; the root's dz_t also gets the kids' part
        dhz = torch.cat([d_hs, d_zs], -1)  # (C, T, B, H + Zm), accumulated in place
        dg = ru.new_empty(C, T, B, 4 * H)
        dpre = ru.new_empty(T, B, C, P)  # (B, C, P) per frame: the kids' part is one (B, K*P) matrix
        d_o0 = ru.new_empty(T, B, 2 * Z0)
        d_ok = ru.new_empty(K, T, B, 2 * Zm)
        w_big_t = w_big[:, :-1].transpose(1, 2).contiguous()  # (C, 4H, H + Zm): contiguous operands are faster
        w_ph_t = w_ph.transpose(1, 2).contiguous()  # (C, P, H)
        w_kid_t = w_pz_t = None
        if K:
            assert w_pz is not None and w_kid is not None
            w_kid_t = w_kid.transpose(1, 2).contiguous()  # (K, 2 Zm, P)
            w_pz_t = w_pz.t().contiguous()  # (K P, Z0)
        d_root, d_kid = d_root.contiguous(), d_kid.contiguous()
        kid_w = [x for x in (w_kid_t, w_pz_t) if x is not None]
        lib = native.usable(k4, ru, dact, std, eps, w_root, d_root, d_kid, *kid_w)
        if lib is not None:  # the loop below in one C call, into the same buffers
            dh = dhz.new_empty(C, B, H)
            bufs = (k4, ru, dact, std, eps, w_big_t, w_ph_t, w_root, w_kid_t, w_pz_t, d_root, d_kid)
            bufs += (dhz, dg, dpre, d_o0, d_ok, dh)
            lib.avm_chains_backward(C, T, B, H, P, Zm, Z0, *(None if x is None else x.data_ptr() for x in bufs))
        else:
            # d o = d o_out + dz * [1, std * eps / 2] (mean, logvar halves)
            coef = std * eps * 0.5
            c0 = torch.stack([torch.ones_like(coef[0, ..., :Z0]), coef[0, ..., :Z0]], 2)  # (T, B, 2, Z0)
            dhz_v, dh_in_v = dhz.unbind(1), dhz[..., :H].unbind(1)
            dz0_v = dhz[0, :, :, H : H + Z0].unbind(0)
            dg_v, dg4_v, k4_v, u_v = dg.unbind(1), dg.view(C, T, B, 4, H).unbind(1), k4.unbind(1), u.unbind(1)
            dpre_t_v, dpre0_v = dpre.transpose(1, 2).unbind(0), dpre[:, :, 0].unbind(0)
            dact0_v = dact[0].unbind(0)
            dd0_v, d_root_v, c0_v = d_o0.unbind(0), d_root.view(T, B, 2, Z0).unbind(0), c0.unbind(0)
            d_o0_v = d_o0.view(T, B, 2, Z0).unbind(0)
            if K:
                ck = torch.stack([torch.ones_like(coef[1:]), coef[1:]], 3)  # (K, T, B, 2, Zm)
                dzk_v = dhz[1:, :, :, None, H:].unbind(1)
                ck_v, d_kid_v = ck.unbind(1), d_kid.view(K, T, B, 2, Zm).unbind(1)
                dok_v, dok4_v = d_ok.unbind(1), d_ok.view(K, T, B, 2, Zm).unbind(1)
                dactk_v = dact[1:].unbind(1)
                dprek_v = dpre[:, :, 1:].transpose(1, 2).unbind(0)  # (K, B, P) each
                dprek_flat_v = dpre[:, :, 1:].flatten(2).unbind(0)  # (B, K P) each
            dh = dhz.new_empty(0)
            for t in range(T - 1, -1, -1):
                if t < T - 1:
                    dhz_v[t].baddbmm_(dg_v[t + 1], w_big_t)
                if K:
                    torch.addcmul(d_kid_v[t], dzk_v[t], ck_v[t], out=dok4_v[t])
                    torch.mul(torch.bmm(dok_v[t], w_kid_t), dactk_v[t], out=dprek_v[t])
                    dz0_v[t].addmm_(dprek_flat_v[t], w_pz_t)
                torch.addcmul(d_root_v[t], dz0_v[t][:, None], c0_v[t], out=d_o0_v[t])
                torch.mul(torch.mm(dd0_v[t], w_root), dact0_v[t], out=dpre0_v[t])
                dh_in = dh_in_v[t] if t == T - 1 else torch.addcmul(dh_in_v[t], dh, u_v[t + 1])
                dh = torch.baddbmm(dh_in, dpre_t_v[t], w_ph_t)  # (C, B, H)
                torch.mul(dh[:, :, None], k4_v[t], out=dg4_v[t])

        need = ctx.needs_input_grad  # type: ignore[attr-defined]
        dg_all = dg.view(C, TB, 4 * H)
        d_a = dpre.permute(2, 0, 1, 3) if need[0] else None
        d_eps = dhz[..., H:] * std if need[1] else None
        d_hz0 = None
        if need[2]:
            d_hz0 = torch.bmm(dg[:, 0], w_big_t)
            d_hz0[..., :H].addcmul_(dh, u[:, 0])
        d_w_big = None
        if need[3]:  # state part (rows :H, columns :3H), input part (rows H:H+Zm, columns H:), biases
            hz_prev = hz[:, :T].reshape(C, TB, -1).transpose(1, 2)  # (C, H + Zm + 1, TB)
            d_w_big = w_big.new_zeros(w_big.shape)
            torch.bmm(hz_prev[:, :H], dg_all[..., : 3 * H], out=d_w_big[:, :H, : 3 * H])
            torch.bmm(hz_prev[:, H:-1], dg_all[..., H:], out=d_w_big[:, H:-1, H:])
            torch.sum(dg_all, 1, out=d_w_big[:, -1])
        d_w_ph = None
        if need[4]:
            dpre_c = dpre.view(TB, C, P).transpose(0, 1)  # (C, TB, P)
            d_w_ph = torch.bmm(hz[:, 1:, :, :H].reshape(C, TB, H).transpose(1, 2), dpre_c)
        d_o0_all = d_o0.view(TB, 2 * Z0)
        d_w_root = d_o0_all.t() @ act[0].view(TB, P) if need[5] else None
        d_b_root = d_o0_all.sum(0) if need[6] else None
        d_w_pz = d_w_kid = d_b_kid = None
        if K:
            if need[7]:
                d_w_pz = hz[0, 1:, :, H : H + Z0].reshape(TB, Z0).t() @ dpre[:, :, 1:].reshape(TB, K * P)
            d_ok_all = d_ok.view(K, TB, 2 * Zm)
            if need[8]:
                d_w_kid = torch.bmm(act[1:].reshape(K, TB, P).transpose(1, 2), d_ok_all)
            if need[9]:
                d_b_kid = d_ok_all.sum(1, keepdim=True)
        return d_a, d_eps, d_hz0, d_w_big, d_w_ph, d_w_root, d_b_root, d_w_pz, d_w_kid, d_b_kid, None


def _run_loop(fn: type[torch.autograd.Function], dtype: torch.dtype, *args: Tensor | None) -> object:
    """fn.apply(*args, needs_backward) with tensors cast to `dtype` and autocast off.

    The recurrences run in the parameters' dtype also under autocast: low-precision state errors would
    compound over frames. needs_backward is False under no_grad or when nothing requires grad, and
    then the forward skips the backward coefficients and saves nothing.
    """
    args = tuple(None if x is None else x.to(dtype) for x in args)
    needs_backward = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in args)
    device = next(x for x in args if x is not None).device
    with torch.autocast(device.type, enabled=False):
        return fn.apply(*args, needs_backward)


def bigru_final(x: Tensor, gru: torch.nn.GRU) -> Tensor:
    """Final states (2, B, H) of a one-layer bidirectional nn.GRU over batch-major x (B, T, in); its
    [h_n[0], h_n[1]] for the time-major x.transpose(0, 1). The input products of all frames are two matmuls
    (in the autocast dtype under autocast); the loop is `BiGRUFinal`."""
    gi_f = F.linear(x, gru.weight_ih_l0)
    gi_b = F.linear(x, gru.weight_ih_l0_reverse)
    params = (gru.weight_hh_l0, gru.weight_hh_l0_reverse, gru.bias_ih_l0, gru.bias_ih_l0_reverse)
    params += (gru.bias_hh_l0, gru.bias_hh_l0_reverse)
    return _run_loop(BiGRUFinal, gru.weight_hh_l0.dtype, gi_f, gi_b, *params)  # type: ignore[return-value]


def chains_loop(
    a: Tensor,
    eps: Tensor,
    hz0: Tensor,
    w_big: Tensor,
    w_ph: Tensor,
    w_root: Tensor,
    b_root: Tensor,
    w_pz: Tensor | None = None,
    w_kid: Tensor | None = None,
    b_kid: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Run `ChainsLoop` (shapes in its docstring) -> (hs, zs, o_root, o_kid)."""
    args = (a, eps, hz0, w_big, w_ph, w_root, b_root, w_pz, w_kid, b_kid)
    return _run_loop(ChainsLoop, w_big.dtype, *args)  # type: ignore[return-value]
