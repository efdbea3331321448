"""Models: shapes, the step-by-step oracle, EMA quantiser, learning on a tiny batch, bf16 autocast."""

from __future__ import annotations

import pytest
import torch

from avmdvae.errors import ConfigError
from avmdvae.models import (
    DSAE,
    MDVAE,
    AudioVQVAE,
    AudioVQVAEDims,
    DSAEDims,
    MDVAEDims,
    VectorQuantizer,
    VisualVQVAE,
    VisualVQVAEDims,
)
from avmdvae.models.mdvae import StaticEncoder
from tests.reference_mdvae import reference_dsae, reference_mdvae

torch.set_num_threads(1)


def _mdvae_noise(d: MDVAEDims, B: int, T: int, dtype=torch.float64, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(B, d.w_dim, generator=g, dtype=dtype),
        "zav": torch.randn(B, T, d.zav_dim, generator=g, dtype=dtype),
        "za": torch.randn(B, T, d.za_dim, generator=g, dtype=dtype),
        "zv": torch.randn(B, T, d.zv_dim, generator=g, dtype=dtype),
    }


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    scale = max(1.0, b.abs().max().item())
    assert err <= tol * scale, f"max abs error {err} (scale {scale})"


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------
def test_dims_defaults_and_round_trip() -> None:
    v, a, m = VisualVQVAEDims(), AudioVQVAEDims(), MDVAEDims()
    assert (v.grid, v.code_dim, v.n_codes, v.feature_dim) == (8, 32, 512, 2048)
    assert (a.positions, a.code_dim, a.n_codes, a.feature_dim) == (64, 8, 64, 512)
    assert (m.w_dim, m.zav_dim, m.za_dim, m.zv_dim, m.seq_len) == (84, 16, 8, 4, 30)
    assert (m.feat_a, m.feat_v) == (a.feature_dim, v.feature_dim)
    for cls, obj in (
        (VisualVQVAEDims, VisualVQVAEDims.tiny()),
        (MDVAEDims, MDVAEDims.tiny()),
        (DSAEDims, DSAEDims.tiny()),
        (AudioVQVAEDims, a),
    ):
        assert cls.from_dict(obj.to_dict()) == obj
    v2 = VisualVQVAEDims.from_dict({"n_codes": 64, "quantizer": {"decay": 0.9}})
    assert v2.n_codes == 64 and v2.quantizer.decay == 0.9
    with pytest.raises(ConfigError, match="unknown"):
        MDVAEDims.from_dict({"w_dimm": 3})
    with pytest.raises(ConfigError, match="integer"):
        MDVAEDims.from_dict({"w_dim": "big"})
    assert DSAEDims.for_modality("audio").resolved_z_dim("audio") == 24
    assert DSAEDims.for_modality("visual").resolved_z_dim("visual") == 20


# ---------------------------------------------------------------------------------------------
# stage 1
# ---------------------------------------------------------------------------------------------
def test_visual_vqvae_reference_shapes() -> None:
    m = VisualVQVAE().eval()
    faces = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    z = m.encode(faces)
    assert z.shape == (2, 32, 8, 8)
    z_q, codes, commit, ppl = m.quantize(z)
    assert z_q.shape == z.shape and codes.shape == (2, 8, 8) and codes.dtype == torch.int64
    assert commit.ndim == 0 and ppl.ndim == 0
    x = m.decode(z_q)
    assert x.shape == (2, 3, 64, 64) and x.min() >= 0 and x.max() <= 1
    f = m.feature(faces)
    assert f.shape == (2, 2048) and f.dtype == torch.float32
    torch.testing.assert_close(f, z.reshape(2, -1))
    seq = m.feature(faces[None].expand(3, 2, 64, 64, 3))  # (..., 64, 64, 3) windows work too
    assert seq.shape == (3, 2, 2048)
    assert m.decode_feature(seq).shape == (3, 2, 3, 64, 64)
    torch.testing.assert_close(m.decode_feature(f), m.decode_codes(codes))


def test_audio_vqvae_reference_shapes() -> None:
    m = AudioVQVAE().eval()
    power = torch.rand(5, 513) ** 4 * 100
    z = m.encode(power)
    assert z.shape == (5, 8, 64)
    z_q, codes, _, _ = m.quantize(z)
    assert codes.shape == (5, 64)
    x = m.decode(z_q)
    assert x.shape == (5, 513) and (x > 0).all()
    assert m.feature(power).shape == (5, 512)
    assert m.decode_feature(m.feature(power[None])).shape == (1, 5, 513)
    loss, metrics = m.loss({"audio": power})
    assert torch.isfinite(loss) and set(metrics) >= {"loss", "rec", "commit", "perplexity", "usage"}


def test_decode_feature_does_not_touch_codebook() -> None:
    m = VisualVQVAE(VisualVQVAEDims.tiny()).train()
    faces = torch.rand(4, 3, 64, 64)
    m.loss(faces)  # initialises + one EMA step
    before = m.quantizer.codebook.clone()
    m.decode_feature(m.feature(faces))
    torch.testing.assert_close(m.quantizer.codebook, before)


# ---------------------------------------------------------------------------------------------
# quantiser
# ---------------------------------------------------------------------------------------------
def test_quantizer_restarts_dead_codes() -> None:
    torch.manual_seed(0)
    q = VectorQuantizer(n_codes=8, dim=2, dead_after=3).train()
    data = lambda: torch.randn(256, 2, 1) * 0.5 + torch.tensor([2.0, -1.0])[None, :, None]  # noqa: E731
    q(data())  # first call initialises from data
    with torch.no_grad():
        q.codebook[4:] = 100.0  # four codes far away from every input: never assigned
        q.embed_sum[4:] = 100.0 * q.cluster_size[4:, None]
    far = q.codebook[4:].clone()
    restarted = 0
    for _ in range(5):
        q(data())
        restarted += q.last_restarts
    assert restarted >= 4
    assert (q.codebook[4:] - far).abs().min() > 50  # moved ...
    assert (q.codebook[4:] - torch.tensor([2.0, -1.0])).norm(dim=1).max() < 3  # ... onto the data
    for _ in range(20):
        out = q(data())
    used = torch.bincount(out.codes.reshape(-1), minlength=8)
    assert (used > 0).sum() >= 7  # the restarted codes now take assignments
    assert out.perplexity > 4


def test_quantizer_perplexity_and_straight_through() -> None:
    q = VectorQuantizer(n_codes=4, dim=2).eval()
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]]))
    z = q.codebook.repeat(3, 1).t()[None].clone().requires_grad_(True)  # (1, 2, 12): each code 3x
    out = q(z)
    assert out.perplexity.item() == pytest.approx(4.0, rel=1e-4)
    assert torch.equal(out.codes[0], torch.arange(4).repeat(3))
    one = q(torch.zeros(1, 2, 6))
    assert one.perplexity.item() == pytest.approx(1.0, rel=1e-4)
    (out.z_q * torch.arange(12.0)).sum().backward()  # straight-through: identity gradient
    torch.testing.assert_close(z.grad[0, 0], torch.arange(12.0))


def test_quantizer_ema_tracks_cluster_means() -> None:
    q = VectorQuantizer(n_codes=2, dim=1, decay=0.5).train()
    q(torch.tensor([[[0.0, 1.0]]]))  # init
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0], [5.0]]))
        q.embed_sum.copy_(q.codebook)
        q.cluster_size.fill_(1.0)
    for _ in range(30):
        q(torch.tensor([[[1.0, 1.2, 4.0, 4.4]]]))
    torch.testing.assert_close(q.codebook[:, 0], torch.tensor([1.1, 4.2]), atol=1e-3, rtol=0)


# ---------------------------------------------------------------------------------------------
# MDVAE / DSAE: oracle
# ---------------------------------------------------------------------------------------------
def _check_against_oracle(out, ref, latent_names) -> None:
    _close(out.loss, ref["loss"])
    _close(out.elbo, ref["elbo"])
    assert set(out.terms) == set(ref["terms"])
    for k in ref["terms"]:
        _close(out.terms[k], ref["terms"][k])
    for i, n in enumerate(latent_names):
        _close(out.latents[i], ref["latents"][n])
        _close(out.posterior[n][0], ref["post"][n][0])
        _close(out.posterior[n][1], ref["post"][n][1])
        if n != "w":
            _close(out.prior[n][0], ref["prior"][n][0])
            _close(out.prior[n][1], ref["prior"][n][1])
    for k in ref["recon"]:
        _close(out.recon[k], ref["recon"][k])


@pytest.mark.parametrize("learn_var", [False, True])
def test_mdvae_matches_step_by_step_oracle(learn_var: bool) -> None:
    torch.manual_seed(1)
    d = MDVAEDims.tiny()
    d.learn_obs_var = learn_var
    m = MDVAE(d).double()
    if learn_var:
        with torch.no_grad():
            m.obs_logvar_a.uniform_(-1, 1)
            m.obs_logvar_v.uniform_(-1, 1)
    B, T = 3, 7
    xa, xv = (
        torch.randn(B, T, d.feat_a, dtype=torch.float64),
        torch.randn(B, T, d.feat_v, dtype=torch.float64),
    )
    noise = _mdvae_noise(d, B, T)
    beta = {"w": 0.5, "zav": 2.0, "za": 1.5, "zv": 0.25}
    out = m(xa, xv, beta=beta, kl_weight=0.3, noise=noise)
    ref = reference_mdvae(m, xa, xv, noise, beta=beta, kl_weight=0.3)
    _check_against_oracle(out, ref, ("w", "zav", "za", "zv"))
    # gradients agree as well
    g1 = torch.autograd.grad(out.loss, list(m.parameters()))
    g2 = torch.autograd.grad(ref["loss"], list(m.parameters()))
    for a, b in zip(g1, g2, strict=True):
        _close(a, b)


def test_mdvae_oracle_float32_reference_sizes() -> None:
    torch.manual_seed(2)
    d = MDVAEDims()
    m = MDVAE(d)
    B, T = 2, 30
    xa, xv = torch.randn(B, T, 512), torch.randn(B, T, 2048)
    noise = _mdvae_noise(d, B, T, dtype=torch.float32)
    out = m(xa, xv, noise=noise)
    ref = reference_mdvae(m, xa, xv, noise)
    _check_against_oracle(out, ref, ("w", "zav", "za", "zv"))


@pytest.mark.parametrize("modality", ["audio", "visual"])
def test_dsae_matches_step_by_step_oracle(modality: str) -> None:
    torch.manual_seed(3)
    d = DSAEDims.tiny(feat=16 if modality == "audio" else 40)
    m = DSAE(d, modality).double()
    B, T = 2, 6
    x = torch.randn(B, T, d.feat, dtype=torch.float64)
    g = torch.Generator().manual_seed(4)
    noise = {
        "w": torch.randn(B, d.w_dim, generator=g, dtype=torch.float64),
        "z": torch.randn(B, T, m.z_dim, generator=g, dtype=torch.float64),
    }
    out = m(x, beta={"z": 3.0}, kl_weight=0.5, noise=noise)
    ref = reference_dsae(m, x, noise, beta={"z": 3.0}, kl_weight=0.5)
    _check_against_oracle(out, ref, ("w", "z"))
    assert set(out.terms) == {f"rec_{modality}", "kl_w", "kl_z"}


# ---------------------------------------------------------------------------------------------
# MDVAE / DSAE: API
# ---------------------------------------------------------------------------------------------
def test_mdvae_shapes_encode_decode() -> None:
    d = MDVAEDims.tiny()
    m = MDVAE(d)
    B, T = 2, 5
    xa, xv = torch.randn(B, T, d.feat_a), torch.randn(B, T, d.feat_v)
    out = m(xa, xv)
    assert out.loss.ndim == 0 and out.loss.dtype == torch.float32
    assert out.latents.w.shape == (B, d.w_dim)
    assert out.latents.zav.shape == (B, T, d.zav_dim)
    assert out.latents.za.shape == (B, T, d.za_dim)
    assert out.latents.zv.shape == (B, T, d.zv_dim)
    assert out.recon["audio"].shape == xa.shape and out.recon["visual"].shape == xv.shape
    assert set(out.metrics()) == {
        "loss",
        "elbo",
        "rec_audio",
        "rec_visual",
        "kl_w",
        "kl_zav",
        "kl_za",
        "kl_zv",
    }
    lat = m.encode(xa, xv)
    lat2 = m.encode(xa, xv)
    for a, b in zip(lat, lat2, strict=True):
        torch.testing.assert_close(a, b)  # posterior means: deterministic
    torch.testing.assert_close(lat.w, out.posterior["w"][0])
    xa_hat, xv_hat = m.decode(lat)
    assert xa_hat.shape == xa.shape and xv_hat.shape == xv.shape
    gen = m.sample_prior(3, 4)
    assert gen.zav.shape == (3, 4, d.zav_dim) and m.decode(gen)[1].shape == (3, 4, d.feat_v)
    with pytest.raises(ConfigError):
        m(torch.randn(B, T, d.feat_a + 1), xv)
    with pytest.raises(ConfigError, match="beta"):
        m(xa, xv, beta={"zq": 1.0})


def test_dsae_shapes() -> None:
    d = DSAEDims.tiny(feat=20)
    m = DSAE(d, "visual")
    x = torch.randn(2, 4, 20)
    lat = m.encode(x)
    assert lat.w.shape == (2, d.w_dim) and lat.z.shape == (2, 4, 5)
    assert m.decode(lat).shape == x.shape
    with pytest.raises(ConfigError):
        DSAE(d, "smell")


# ---------------------------------------------------------------------------------------------
# learning and precision
# ---------------------------------------------------------------------------------------------
def _train(loss_fn, params, steps: int, lr: float) -> tuple[float, float]:
    opt = torch.optim.Adam(params, lr=lr)
    first = last = None
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
    return first, last


def test_loss_decreases_on_tiny_batch() -> None:
    torch.manual_seed(5)
    d = MDVAEDims.tiny()
    m = MDVAE(d)
    # structured windows (a per-sequence pattern of amplitude 3 plus small noise): much to learn
    xa = 3 * torch.randn(4, 1, d.feat_a) + 0.1 * torch.randn(4, 6, d.feat_a)
    xv = 3 * torch.randn(4, 1, d.feat_v) + 0.1 * torch.randn(4, 6, d.feat_v)
    first, last = _train(lambda: m(xa, xv).loss, m.parameters(), 40, 1e-2)
    assert last < 0.8 * first

    ds = DSAE(DSAEDims.tiny(feat=16), "audio")
    x = 3 * torch.randn(4, 1, 16) + 0.1 * torch.randn(4, 6, 16)
    first, last = _train(lambda: ds(x).loss, ds.parameters(), 40, 1e-2)
    assert last < 0.8 * first

    vd = VisualVQVAEDims.tiny()
    vd.quantizer.dead_after = 2  # smooth images collapse onto few codes at first: restart quickly
    v = VisualVQVAE(vd)
    ramp = torch.linspace(0, 1, 64)
    colour = torch.rand(8, 1, 1, 3)
    faces = (255 * (0.6 * colour + 0.4 * ramp[None, :, None, None] * ramp[None, None, :, None])).to(
        torch.uint8
    )
    first, last = _train(lambda: v.loss({"visual": faces})[0], v.parameters(), 25, 1e-2)
    assert last < 0.9 * first

    a = AudioVQVAE(AudioVQVAEDims.tiny())
    power = torch.rand(8, 513) ** 4 * 100
    first, last = _train(lambda: a.loss(power)[0], a.parameters(), 25, 1e-2)
    assert last < 0.8 * first


def test_bf16_autocast_cpu() -> None:
    torch.manual_seed(6)
    d = MDVAEDims.tiny()
    m = MDVAE(d)
    xa, xv = torch.randn(2, 5, d.feat_a), torch.randn(2, 5, d.feat_v)
    ref = m(xa, xv, noise=_mdvae_noise(d, 2, 5, torch.float32)).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(xa, xv, noise=_mdvae_noise(d, 2, 5, torch.float32))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert abs(out.loss.item() - ref.item()) < 0.05 * abs(ref.item())
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    ds = DSAE(DSAEDims.tiny(feat=16), "audio")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ds(torch.randn(2, 5, 16)).loss
    loss.backward()
    for vq, batch in (
        (VisualVQVAE(VisualVQVAEDims.tiny()), torch.rand(2, 3, 64, 64)),
        (AudioVQVAE(AudioVQVAEDims.tiny()), torch.rand(2, 513)),
    ):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, metrics = vq.loss(batch)
            f = vq.feature(batch)
        loss.backward()
        assert torch.isfinite(loss) and metrics["perplexity"] >= 1
        assert f.shape[-1] == vq.feature_dim


def test_static_encoder_matches_torch_gru() -> None:
    """The hand-written bidirectional GRU (BiGRUFinal) equals nn.GRU in value and gradient, with or without grad."""
    torch.manual_seed(7)
    enc = StaticEncoder(12, 10, 5).double()
    e = torch.randn(3, 7, 12, dtype=torch.float64, requires_grad=True)  # (B, T, in)
    up = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)

    def via_torch_gru() -> tuple[torch.Tensor, torch.Tensor]:
        h_n = enc.gru(e.transpose(0, 1))[1]
        mean, logvar = enc.head(torch.cat([h_n[0], h_n[1]], -1)).chunk(2, -1)
        return mean, logvar

    for ours, ref in zip(enc(e), via_torch_gru(), strict=True):
        _close(ours, ref, 1e-12)
    params = [e, *enc.parameters()]
    g_ours = torch.autograd.grad(sum((o * u).sum() for o, u in zip(enc(e), up, strict=True)), params)
    g_ref = torch.autograd.grad(sum((o * u).sum() for o, u in zip(via_torch_gru(), up, strict=True)), params)
    for a, b in zip(g_ours, g_ref, strict=True):
        _close(a, b, 1e-12)
    with torch.no_grad():
        _close(enc(e)[0], via_torch_gru()[0], 1e-12)
