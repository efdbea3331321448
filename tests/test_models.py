"""Models: shapes, gradients, the ELBO, causality, standardisation, whole-clip inference, EMA quantiser,
learning on a tiny batch, bf16 autocast, one compiled graph."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

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
from avmdvae.models.layers import unroll
from avmdvae.models.seqvae import COMPILE_CONFIG, compile_model

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
# MDVAE / DSAE: the model
# ---------------------------------------------------------------------------------------------
def _fitted(m, *xs):
    m.fit_input_stats({mod: x.flatten(0, 1) for mod, x in zip(m.modalities, xs, strict=True)})
    return m


def _tiny_mdvae(B: int = 3, T: int = 7, dtype=torch.float64, seed: int = 1, **over):
    torch.manual_seed(seed)
    d = MDVAEDims.tiny()
    for k, v in over.items():
        setattr(d, k, v)
    xa = 2.0 + 3.0 * torch.randn(B, T, d.feat_a, dtype=dtype)  # off-centre, unequal scales: standardised
    xv = 0.1 * torch.randn(B, T, d.feat_v, dtype=dtype) - 1.0
    return _fitted(MDVAE(d).to(dtype), xa, xv), d, xa, xv


@pytest.mark.parametrize("learn_var", [False, True])
def test_mdvae_gradients_match_finite_differences(learn_var: bool) -> None:
    """float64 gradcheck of the loss wrt the inputs and parameters of every part (q(w), chains, priors, decoders)."""
    m, d, xa, xv = _tiny_mdvae(B=2, T=4, learn_obs_var=learn_var)
    if learn_var:
        with torch.no_grad():
            for p in m.obs_logvar.values():
                p.uniform_(-1, 1)
    noise = _mdvae_noise(d, 2, 4)
    names = ["q_w.gru.weight_hh_l0_reverse", "chains.zav.cell.weight_ih", "chains.za.post_recurrent.weight",
             "chains.zv.prior.net.2.bias", "decoders.visual.0.weight", "embed.audio.0.bias"]
    names += [f"obs_logvar.{k}" for k in ("audio", "visual")] if learn_var else []
    params = dict(m.named_parameters())
    chosen = tuple(params[n].detach().clone().requires_grad_(True) for n in names)
    xa, xv = xa.clone().requires_grad_(True), xv.clone().requires_grad_(True)

    def loss(xa_, xv_, *ps):
        out = torch.func.functional_call(m, {**params, **dict(zip(names, ps, strict=True))}, (xa_, xv_),
                                         {"noise": noise, "beta": {"zav": 2.0}, "kl_weight": 0.3})
        return out.loss

    assert torch.autograd.gradcheck(loss, (xa, xv, *chosen))


def test_mdvae_loss_is_the_negative_elbo_of_its_parts() -> None:
    """loss = (NLL + kl_weight * sum beta_k KL_k) / T and elbo = -(NLL + sum KL_k), checked with torch.distributions."""
    from torch.distributions import Normal, kl_divergence

    m, d, xa, xv = _tiny_mdvae()
    B, T = xa.shape[:2]
    beta = {"w": 0.5, "zav": 2.0, "za": 1.5, "zv": 0.25}
    out = m(xa, xv, beta=beta, kl_weight=0.3, noise=_mdvae_noise(d, B, T))
    std = {mod: (x - m.norm[mod].mean) / m.norm[mod].std for mod, x in (("audio", xa), ("visual", xv))}
    nll = 0.0
    for mod, y in std.items():
        mean = (out.recon[mod] - m.norm[mod].mean) / m.norm[mod].std
        nll = nll - Normal(mean, 1.0).log_prob(y).sum() / B
    kl = {"w": kl_divergence(Normal(*out.posterior["w"][:1], out.posterior["w"][1].mul(0.5).exp()), Normal(0.0, 1.0))}
    for n in ("zav", "za", "zv"):
        (mq, lq), (mp, lp) = out.posterior[n], out.prior[n]
        kl[n] = kl_divergence(Normal(mq, lq.mul(0.5).exp()), Normal(mp, lp.mul(0.5).exp()))
    kl = {n: v.sum() / B for n, v in kl.items()}
    _close(out.elbo, -(nll + sum(kl.values())))
    _close(out.loss, (nll + 0.3 * sum(beta[n] * kl[n] for n in kl)) / T)
    # z samples are the reparameterised posterior means and scales of the given noise
    noise = _mdvae_noise(d, B, T)
    _close(out.latents.za, out.posterior["za"][0] + out.posterior["za"][1].mul(0.5).exp() * noise["za"])


def test_without_dynamic_prior_each_frame_pays_its_kl_to_a_standard_normal() -> None:
    """dynamic_prior false: no prior parameters; KL(z) = sum over frames of KL(q(z_t) || N(0, I)), so a
    latent that repeats the same value T times pays T times what w pays for it once."""
    from torch.distributions import Normal, kl_divergence

    m, d, xa, xv = _tiny_mdvae(dynamic_prior=False)
    assert not any(".prior." in n for n, _ in m.named_parameters())
    B, T = xa.shape[:2]
    out = m(xa, xv, noise=_mdvae_noise(d, B, T))
    for n in ("zav", "za", "zv"):
        mp, lp = out.prior[n]
        assert mp.shape == (B, T, getattr(d, f"{n}_dim")) and not mp.any() and not lp.any()
        mq, lq = out.posterior[n]
        want = kl_divergence(Normal(mq, lq.mul(0.5).exp()), Normal(0.0, 1.0)).sum() / B
        _close(out.terms[f"kl_{n}"], want)
    with_dyn, *_ = _tiny_mdvae()
    assert any(".prior." in n for n, _ in with_dyn.named_parameters())


@pytest.mark.parametrize("view", ["absolute", "centred-za", "centred-za-zv", "centred"])
def test_decoder_z_hides_what_stays_put_in_a_centred_latent_from_the_decoders(view: str) -> None:
    """A per-sequence offset added to a dynamical latent changes the decoded features unless that latent
    is centred; w still reaches both decoders. Checked on whole clips (decode) of two lengths."""
    m, d, *_ = _tiny_mdvae(decoder_z=view)
    centred = {"absolute": set(), "centred-za": {"za"}, "centred-za-zv": {"za", "zv"},
               "centred": {"zav", "za", "zv"}}[view]
    for N in (5, 12):
        g = torch.Generator().manual_seed(N)
        lat = m.Latents(*(torch.randn(2, *s, generator=g, dtype=torch.float64)
                          for s in [(d.w_dim,), (N, d.zav_dim), (N, d.za_dim), (N, d.zv_dim)]))
        base = m.decode(lat)
        for name in ("w", "zav", "za", "zv"):
            v = getattr(lat, name)
            moved = m.decode(lat._replace(**{name: v + torch.randn(2, *[1] * (v.dim() - 2), v.shape[-1],
                                                                         generator=g, dtype=v.dtype)}))
            unchanged = [torch.allclose(a, b, atol=1e-10) for a, b in zip(base, moved, strict=True)]
            reads = {"w": [True, True], "zav": [True, True], "za": [True, False], "zv": [False, True]}[name]
            want = [not r or name in centred for r in reads]
            assert unchanged == want, (name, unchanged)


def test_decoder_z_must_be_a_known_view() -> None:
    with pytest.raises(ConfigError, match="decoder_z must be one of absolute, centred-za, centred-za-zv, centred"):
        MDVAEDims.from_dict({"decoder_z": "deviations"})


def test_switches_of_removed_ablations_load_at_their_kept_value_and_are_refused_at_any_other() -> None:
    """Configs of runs trained before the refuted ablations were removed (the shipped demo MDVAE's among them)
    still load; a config that asks for a removed behaviour says so instead of silently dropping it."""
    shipped = yaml.safe_load((Path(__file__).parents[1] / "models" / "demo" / "mdvae" / "config.yaml").read_text())
    assert {"decoder", "swap_cycle", "za_critic"} <= set(shipped["model"])
    assert MDVAEDims.from_dict(shipped["model"]) == MDVAEDims.from_dict(
        {k: v for k, v in shipped["model"].items() if k not in MDVAEDims.retired})
    assert MDVAEDims.from_dict({"visual_grid": 4}) == MDVAEDims()  # None: any value was only bookkeeping
    for key, value in [("decoder", "film"), ("swap_cycle", 10.0), ("zv_view", "eyes"), ("chain_inputs", "deviations")]:
        with pytest.raises(ConfigError, match=f"MDVAEDims.{key} was an ablation switch and has been removed"):
            MDVAEDims.from_dict({key: value})
    with pytest.raises(ConfigError, match="unknown MDVAEDims key"):
        MDVAEDims.from_dict({"decoder_kind": "concat"})


def test_chains_are_causal_and_children_read_the_shared_latent() -> None:
    m, d, xa, xv = _tiny_mdvae()
    B, T = xa.shape[:2]
    noise = _mdvae_noise(d, B, T)
    w = torch.randn(B, T, d.w_dim, dtype=torch.float64)
    e = m._embed({"audio": xa, "visual": xv})[1]
    ref = unroll(m.chains, m.contexts(e, w), noise)
    e2 = {k: v.clone() for k, v in e.items()}
    e2["audio"][:, 4:] += 1.0  # change the future only
    fut = unroll(m.chains, m.contexts(e2, w), noise)
    for n in ("zav", "za", "zv"):
        torch.testing.assert_close(fut[n].z[:, :4], ref[n].z[:, :4])
        assert not torch.allclose(fut[n].z[:, 4:], ref[n].z[:, 4:])
    other = dict(noise, zav=noise["zav"].clone())
    other["zav"][:, 2] += 1.0  # a different z(av) sample at frame 2 moves z(a), z(v) at frame 2 too
    moved = unroll(m.chains, m.contexts(e, w), other)
    for n in ("za", "zv"):
        torch.testing.assert_close(moved[n].z[:, :2], ref[n].z[:, :2])
        assert not torch.allclose(moved[n].post[0][:, 2], ref[n].post[0][:, 2])
    other = dict(noise, za=noise["za"] + 1.0)  # ... but z(av) never reads z(a)
    torch.testing.assert_close(unroll(m.chains, m.contexts(e, w), other)["zav"].z, ref["zav"].z)


def test_inputs_are_standardised_inside_the_model() -> None:
    """The loss is invariant to a per-dimension affine change of the features (after refitting), the
    statistics travel in the state dict, decode gives raw units, and an unfitted model refuses to run."""
    m, d, xa, xv = _tiny_mdvae()
    noise = _mdvae_noise(d, *xa.shape[:2])
    ref = m(xa, xv, noise=noise)
    scale, shift = torch.rand(d.feat_v, dtype=torch.float64) * 50 + 0.1, torch.randn(d.feat_v, dtype=torch.float64)
    m2 = MDVAE(d).double()
    m2.load_state_dict(m.state_dict())
    _fitted(m2, xa, xv * scale + shift)
    moved = m2(xa, xv * scale + shift, noise=noise)
    _close(moved.loss, ref.loss, 1e-9)
    _close(moved.recon["visual"], ref.recon["visual"] * scale + shift, 1e-9)
    assert {"norm.audio.mean", "norm.visual.std"} <= set(m.state_dict())
    lat = m.encode_sequence(xa, xv)
    assert m.decode(lat)[1].mean().item() == pytest.approx(xv.mean().item(), abs=0.5)  # raw units, not ~0
    with pytest.raises(ConfigError, match="fit"):
        MDVAE(d)(xa.float(), xv.float())


def test_encode_sequence_sees_training_windows() -> None:
    """One window: the forward pass's posterior means. Longer clips: w pooled over T-frame tiles, each
    frame's z from the earliest overlapping T-frame window that contains it (chains from a zero state)."""
    m, d, xa, xv = _tiny_mdvae(B=2, T=8)
    zero = {k: torch.zeros_like(v) for k, v in _mdvae_noise(d, 2, 8).items()}
    out = m(xa, xv, noise=zero)
    lat = m.encode_sequence(xa, xv)
    _close(lat.w, out.posterior["w"][0], 1e-12)
    for n in ("zav", "za", "zv"):
        _close(getattr(lat, n), out.posterior[n][0], 1e-12)
    T, N = d.seq_len, 29
    ya, yv = torch.randn(2, N, d.feat_a, dtype=torch.float64), torch.randn(2, N, d.feat_v, dtype=torch.float64)
    lat = m.encode_sequence(ya, yv)
    assert lat.w.shape == (2, d.w_dim) and lat.zav.shape == (2, N, d.zav_dim) and lat.zv.shape == (2, N, d.zv_dim)
    # w: precision-weighted mean over the tiles [0, 8), [8, 16), [16, 24), [21, 29)
    posts = [m(ya[:, a:b], yv[:, a:b], noise={"w": torch.zeros(2, d.w_dim, dtype=torch.float64)}).posterior["w"]
             for a, b in ((0, 8), (8, 16), (16, 24), (21, 29))]
    prec = [torch.exp(-lv) for _, lv in posts]
    _close(lat.w, sum(p * mu for p, (mu, _) in zip(prec, posts, strict=True)) / sum(prec), 1e-9)
    # z at frame 13 comes from the window [8, 16) (hop 4: windows start at 0, 4, 8, ...; [4, 12) ends first)
    e = m._embed({"audio": ya[:, 8:16], "visual": yv[:, 8:16]})[1]
    win = unroll(m.chains, m.contexts(e, lat.w[:, None].expand(-1, T, -1)),
                 {n: torch.zeros(2, T, c.z_dim, dtype=torch.float64) for n, c in m.chains.items()})
    _close(lat.za[:, 13], win["za"].post[0][:, 5], 1e-12)
    assert m.encode_sequence(ya[:, :1], yv[:, :1]).zav.shape == (2, 1, d.zav_dim)
    gen = m.sample_prior(3, 4)
    assert gen.zav.shape == (3, 4, d.zav_dim) and m.decode(gen)[1].shape == (3, 4, d.feat_v)
    with pytest.raises(ConfigError):
        m(torch.randn(2, 5, d.feat_a + 1, dtype=torch.float64), yv[:, :5])
    with pytest.raises(ConfigError, match="beta"):
        m(xa, xv, beta={"zq": 1.0})


def test_mlp_depths_are_configurable_and_the_official_config_builds() -> None:
    d = MDVAEDims.from_dict({**MDVAEDims.tiny().to_dict(), "proj_a": [], "post_hidden": [9, 5],
                             "dec_hidden_v": [13, 7], "w_head": 6, "prior_hidden": []})
    assert d.w_head == [6]
    m = MDVAE(d)
    assert len(m.embed["audio"]) == 0 and len(m.decoders["visual"]) == 5  # 2 x (Linear, tanh) + Linear
    assert m.chains["zav"].post_context.in_features == d.feat_a + 16 + d.w_dim  # audio unprojected
    xa, xv = torch.randn(2, 5, d.feat_a), torch.randn(2, 5, d.feat_v)
    _fitted(m, xa, xv)(xa, xv).loss.backward()
    with pytest.raises(ConfigError, match="post_hidden"):
        MDVAEDims.from_dict({"post_hidden": []})
    with pytest.raises(ConfigError, match="layer widths"):
        MDVAEDims.from_dict({"dec_hidden_a": [256, "x"]})
    official = yaml.safe_load((Path(__file__).parents[1] / "models" / "mdvae-official.yaml").read_text())
    m = MDVAE(MDVAEDims.from_dict(official["model"]))
    assert m.embed["visual"][0].out_features == 1024 and m.embed["visual"][2].out_features == 512
    assert len(m.embed["audio"]) == 0 and len(m.decoders["audio"]) == 5


def test_dsae_shapes() -> None:
    d = DSAEDims.tiny(feat=20)
    x = torch.randn(2, 4, 20)
    m = _fitted(DSAE(d, "visual"), x)
    out = m(x)
    assert set(out.terms) == {"rec_visual", "kl_w", "kl_z"}
    lat = m.encode_sequence(x)
    assert lat.w.shape == (2, d.w_dim) and lat.z.shape == (2, 4, 5)
    assert m.decode(lat)[0].shape == x.shape
    with pytest.raises(ConfigError):
        DSAE(d, "smell")


def test_step_compiles_to_one_graph() -> None:
    """torch.compile (`train.compile`) traces the whole forward without a graph break."""
    m, d, xa, xv = _tiny_mdvae(B=2, T=5, dtype=torch.float32)
    noise = _mdvae_noise(d, 2, 5, torch.float32)
    with torch._dynamo.config.patch(**COMPILE_CONFIG):
        explained = torch._dynamo.explain(m)(xa, xv, noise=noise)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
    compiled = compile_model(m, backend="eager")  # what `train.compile` runs (inductor itself: a slow test)
    out = compiled(xa, xv, noise=noise)
    out.loss.backward()
    _close(out.loss, m(xa, xv, noise=noise).loss, 1e-6)


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
    _fitted(m, xa, xv)
    first, last = _train(lambda: m(xa, xv).loss, m.parameters(), 40, 1e-2)
    assert last < 0.8 * first

    x = 3 * torch.randn(4, 1, 16) + 0.1 * torch.randn(4, 6, 16)
    ds = _fitted(DSAE(DSAEDims.tiny(feat=16), "audio"), x)
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
    xa, xv = torch.randn(2, 5, d.feat_a), torch.randn(2, 5, d.feat_v)
    m = _fitted(MDVAE(d), xa, xv)
    ref = m(xa, xv, noise=_mdvae_noise(d, 2, 5, torch.float32)).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(xa, xv, noise=_mdvae_noise(d, 2, 5, torch.float32))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert abs(out.loss.item() - ref.item()) < 0.05 * abs(ref.item())
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    x = torch.randn(2, 5, 16)
    ds = _fitted(DSAE(DSAEDims.tiny(feat=16), "audio"), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ds(x).loss
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


def test_runs_from_before_standardisation_fail_with_a_clear_message() -> None:
    from avmdvae.training.checkpoint import load_model_state

    old = {k: v for k, v in MDVAE(MDVAEDims.tiny()).state_dict().items() if not k.startswith("norm.")}
    with pytest.raises(ConfigError, match="train it again"):
        load_model_state(MDVAE(MDVAEDims.tiny()), old, "old/best.pt")


def test_za_band_infers_za_from_the_lowest_frequency_positions_of_the_audio_feature_only() -> None:
    # tiny audio feature: 2 channels x 8 positions, flattened channel-major; z(a) reads positions 0-2
    m, d, xa, xv = _tiny_mdvae(B=2, T=5, audio_positions=8, za_band=3)
    high = torch.zeros(2, 8, dtype=torch.bool)
    high[:, 3:] = True
    high = high.flatten()  # the positions above the band, in both channels
    xa_high = xa.clone()
    xa_high[..., high] += 5.0 * torch.randn_like(xa_high[..., high])
    xa_low = xa.clone()
    xa_low[..., ~high] += 5.0 * torch.randn_like(xa_low[..., ~high])
    w = torch.rand(2, 5, d.w_dim, dtype=xa.dtype)

    def ctx(a: torch.Tensor) -> dict[str, torch.Tensor]:
        return m.contexts(m._embed({"audio": a, "visual": xv})[1], w)

    base = ctx(xa)
    _close(ctx(xa_high)["za"], base["za"])  # z(a) does not see above the band
    assert (ctx(xa_low)["za"] - base["za"]).abs().max() > 1e-3  # and does see the band
    assert (ctx(xa_high)["zav"] - base["zav"]).abs().max() > 1e-3  # z(av) still sees the whole spectrum
    # q(w) reads the modalities' embeddings only, and a whole clip is encoded as in training
    lat = m.encode_sequence(xa, xv)
    assert lat.za.shape == (2, 5, d.za_dim)
    assert torch.isfinite(m(xa, xv, noise=_mdvae_noise(d, 2, 5)).loss)
    with pytest.raises(ConfigError, match="za_band must be in"):
        MDVAEDims.from_dict({"feat_a": 16, "audio_positions": 8, "za_band": 9})
    with pytest.raises(ConfigError, match="a multiple of audio_positions"):
        MDVAEDims.from_dict({"feat_a": 16, "audio_positions": 5, "za_band": 2})
