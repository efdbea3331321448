"""Swap fidelity against the generator's counterfactual (`avmdvae eval --tasks swap`).

On a synthetic corpus the generator can render the true answer to "A with latent L from B"
(`avmdvae.synth.counterfactual`). For each pair (A, B) of clips of different speakers and each L in
w, zav, za, zv, all:

    o = decode(combine(encode(A), encode(B), L))        the model's swap (B fitted by `stretch`)
    r = decode(encode(A))                                the model's resynthesis of A
    c = stage 1 (quantise + decode) of the counterfactual, cropped by the corpus front end: the best
        a stage-2 model can do. For audio, c is stage 1's dB spectrum averaged over NOISE_DRAWS other
        noise realisations of the counterfactual (`synth.counterfactual.counterfactual_audio`): nothing
        in the factors fixes the aspiration, frication and floor noise, whose periodogram differs by
        about 7.4 dB LSD between two draws (one draw lies 3.4 dB from the noise-free spectrum after the
        shipped stage 1), so one draw as the target would cap an ideal audio swap's fidelity at 0.44
        (z(a)) to 0.70 (z(av)) (bench/noise_floor.py; docs/results.md, twelfth round)

    fidelity = clip(1 - d(o, c) / d(r, c), -1, 1)        per modality the swap changes by design

with d = mean squared error of the face crops (pixels in [0, 1]) for visual and the log-spectral
distance (dB) for audio. 1: o is the counterfactual; 0: o is no closer to it than A's resynthesis
(a no-op); negative: further away than a no-op (-1 = clipped floor). A modality the latent should
not change (visual for za, audio for zv) has no fidelity (its counterfactual is A itself): there the
report gives leakage = d(o, r) / d(o_all, r), how far the output moved relative to the model's own
full swap (0 = untouched, 1 = as far as copying all of B).

Where a swap fails, the task also says in which part of the code: the model encodes c, and `code_shift`
gives, per latent, how far c's code moved from A's toward B's (1 for the swapped latent and 0 for the
others in a factorised model); `hybrid` scores two mixtures, A's code with the swapped latent taken from
c's ("a_with_c": the swap with the code the factor has in A's context) and c's code with B's latent in
its place ("c_with_b").

With the factor estimators of `avmdvae.evaluation.estimators` (trained on fresh generated clips,
never on the model), the task also runs the factor-transfer swap test of
`avmdvae.evaluation.disentangle` on o and, as its ceiling, on c, using only the estimators whose
held-out R^2 >= 0.8 (accuracy >= 0.9 for labels). Their quality on the counterfactuals after stage 1
(c, with the generator's truth) is reported too: what the estimators still see through the VQ-VAEs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avmdvae.constants import MDVAE_LATENTS, Progress, no_progress
from avmdvae.errors import ConfigError
from avmdvae.evaluation import disentangle as dis
from avmdvae.evaluation import metrics as M

SWAP_LATENTS = ("w", "zav", "za", "zv", "all")
MODALITIES = ("audio", "visual")
SCORE_MIN, SCORE_MAX = -1.0, 1.0
SYNTH_MANIFEST = "synth.json"
# Noise draws averaged into the audio counterfactual. The average keeps 1/K of one draw's noise variance: one
# draw lies about 3.4 dB LSD from the noise-free spectrum after stage 1, the average of 16 about 3.4 / 4 = 0.85 dB.
NOISE_DRAWS = 16



@dataclass
class Media:
    """Face crops (N, 64, 64, 3) uint8 and power spectrogram (N, F) of one clip."""

    faces: np.ndarray
    power: np.ndarray

    def head(self, n: int) -> Media:
        return Media(self.faces[:n], self.power[:n])


# ------------------------------------------------------------------------------------------ distances
def face_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error of two face-crop sequences (pixels scaled to [0, 1]; common frames)."""
    n = min(len(a), len(b))
    x = np.asarray(a[:n], np.float64) / 255.0
    y = np.asarray(b[:n], np.float64) / 255.0
    return float(np.mean((x - y) ** 2))


def audio_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Log-spectral distance (dB) of two power spectrograms (common frames)."""
    return M.log_spectral_distance(a, b)


def distance(modality: str, a: Media, b: Media) -> float:
    return face_distance(a.faces, b.faces) if modality == "visual" else audio_distance(a.power, b.power)


def _as_vector(modality: str, m: Media, n: int) -> np.ndarray:
    """The first n frames as one vector: pixels in [0, 1] (visual) or dB of power (audio)."""
    if modality == "visual":
        return np.asarray(m.faces[:n], np.float64).ravel() / 255.0
    return 10.0 * np.log10(np.asarray(m.power[:n], np.float64).clip(0) + M.LSD_EPS).ravel()


def decompose(modality: str, o: Media, r: Media, c: Media) -> tuple[float, float]:
    """Where a swap's error comes from: with v = c - r (the counterfactual's change) and u = o - r (the swap's),
    along = <u, v> / |v|^2 (the share of the way to c the swap went: 0 no-op, 1 all of it) and
    off = |u - along v|^2 / |v|^2 (what it changed that the counterfactual does not, in units of the change).
    Face pixels in [0, 1], or dB of power. For faces, fidelity = 1 - (1 - along)^2 - off exactly (d is the
    MSE); for audio approximately (d is the log-spectral distance). (nan, nan) when c equals r."""
    n = min(len(m.faces if modality == "visual" else m.power) for m in (o, r, c))
    ov, rv, cv = (_as_vector(modality, m, n) for m in (o, r, c))
    return M.project(ov - rv, cv - rv)


def fidelity(d_oc: float, d_rc: float, eps: float = 1e-12) -> float:
    """clip(1 - d(o, c) / d(r, c), -1, 1); nan when r already equals c (nothing to measure)."""
    if not np.isfinite(d_oc) or not np.isfinite(d_rc) or d_rc <= eps:
        return float("nan")
    return float(np.clip(1.0 - d_oc / d_rc, SCORE_MIN, SCORE_MAX))


def affected(latent: str) -> tuple[str, ...]:
    """Modalities a swap of `latent` changes by design ("all": both)."""
    from avmdvae.synth.counterfactual import affected_modalities

    return affected_modalities([latent])


# ------------------------------------------------------------------------------ the counterfactual's code
def code_shift(a: Any, b: Any, c: Any, centred: Iterable[str] = ()) -> dict[str, dict[str, float]]:
    """Where a counterfactual's change lands in the model's code. a, b, c: Latents (batch 1; posterior
    means) of A, B and the counterfactual c. Per latent X, with B's code fitted to A's length as a swap
    fits it (`manipulation.swap.combine`) and the latents in `centred` minus their mean over the frames
    (as the decoders read them): v = X_b - X_a, u = X_c - X_a,
        moved = <u, v> / |v|^2   the share of the way from A's code to B's that c's code went
        resid = |u - moved v|^2 / |v|^2   how far c's code lies off that line, in units of |v|^2.
    A factorised model moves the swapped latent all the way (1, 0) and leaves the others (0, 0). nan where
    A's and B's codes coincide."""
    from avmdvae.manipulation.swap import combine

    b, c = combine(a, b, MDVAE_LATENTS), combine(a, c, MDVAE_LATENTS)  # dynamics fitted to A's length
    keep = set(centred)
    out: dict[str, dict[str, float]] = {}
    for x in MDVAE_LATENTS:
        xa, xb, xc = (getattr(lat, x)[0].double() for lat in (a, b, c))
        if x in keep:
            xa, xb, xc = (t - t.mean(0, keepdim=True) for t in (xa, xb, xc))
        moved, resid = M.project((xc - xa).flatten(), (xb - xa).flatten())
        out[x] = {"moved": moved, "resid": resid}
    return out


def summarise_code(rows: Mapping[str, Sequence[Mapping[str, Mapping[str, float]]]]) -> dict[str, Any]:
    """swapped latent -> list of `code_shift` dicts -> {latent: {X: {"moved", "resid"}}}, medians over pairs
    (ratios: one pair whose A and B codes nearly coincide would dominate a mean)."""
    out: dict[str, Any] = {}
    for latent, per in rows.items():
        out[latent] = {x: {k: M.stats(r[x][k] for r in per)["median"] for k in ("moved", "resid")}
                       for x in (per[0] if per else {})}
    return out


def pair_scores(o: Media, r: Media, c: Media, latent: str, o_all: Media | None = None) -> dict[str, Any]:
    """One pair, one latent: {"fidelity": {modality: score}, "leakage": {modality: value}, "along" and
    "off": {modality: value} (`decompose`)}; fidelity, along and off for the modalities the latent changes,
    leakage for the others."""
    out: dict[str, dict[str, float]] = {"fidelity": {}, "leakage": {}, "along": {}, "off": {}}
    for m in MODALITIES:
        if m in affected(latent):
            out["fidelity"][m] = fidelity(distance(m, o, c), distance(m, r, c))
            out["along"][m], out["off"][m] = decompose(m, o, r, c)
        elif o_all is not None:
            den = distance(m, o_all, r)
            out["leakage"][m] = distance(m, o, r) / den if den > 1e-12 else float("nan")
    return out


def summarise(per_pair: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """per_pair: latent -> list of pair_scores dicts. Returns
    {"swap_fidelity": {latent: {audio, visual, mean}} (floats: means over pairs; nan where the
    modality is not affected; "mean" over the affected modalities), "fidelity_stats", "leakage",
    "decomposition": {latent: {modality: {"along", "off"}}} (means over pairs; see `decompose`)}."""
    fid: dict[str, dict[str, float]] = {}
    st: dict[str, dict[str, Any]] = {}
    leak: dict[str, dict[str, Any]] = {}
    dec: dict[str, dict[str, dict[str, float]]] = {}
    for latent, rows in per_pair.items():
        st[latent] = {m: M.stats(r["fidelity"][m] for r in rows) for m in MODALITIES if m in affected(latent)}
        dec[latent] = {m: {k: M.stats(r[k][m] for r in rows if m in r.get(k, {}))["mean"] for k in ("along", "off")}
                       for m in st[latent]}
        leak[latent] = {m: M.stats(r["leakage"][m] for r in rows if m in r["leakage"]) for m in MODALITIES
                        if m not in affected(latent)}
        fid[latent] = {m: st[latent][m]["mean"] if m in st[latent] else float("nan") for m in MODALITIES}
        vals = [fid[latent][m] for m in st[latent] if np.isfinite(fid[latent][m])]
        fid[latent]["mean"] = float(np.mean(vals)) if vals else float("nan")
    return {"swap_fidelity": fid, "fidelity_stats": st, "leakage": leak, "decomposition": dec}


# ------------------------------------------------------------------------------------ synthetic source
def synth_source(source: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """(root, synth.json content) of the synthetic corpus a clip's source video belongs to, or None."""
    p = Path(source)
    for d in list(p.parents)[:8]:
        f = d / SYNTH_MANIFEST
        if f.is_file():
            try:
                desc = json.loads(f.read_text())
            except (OSError, ValueError):
                return None
            if isinstance(desc, dict) and "options" in desc:
                return d, desc
    return None


def clip_spec(truth: Mapping[str, np.ndarray], speaker_names: Sequence[str] | None = None) -> Any:
    """The generator's ClipSpec of a clip from its truth (speaker name, emotion, intensity, sentence)."""
    from avmdvae.synth.factors import ClipSpec

    name = str(np.asarray(truth["speaker"]).reshape(-1)[0])
    if speaker_names and name in speaker_names:
        idx = list(speaker_names).index(name)
    else:
        try:
            idx = int(name[1:]) - 1
        except ValueError:
            raise ConfigError(f"truth speaker {name!r} is not a synthetic speaker id (M001, W002, ...)") from None
    return ClipSpec(idx, str(np.asarray(truth["emotion"]).reshape(-1)[0]),
                    int(np.asarray(truth["intensity"]).reshape(-1)[0]),
                    int(np.asarray(truth["sentence"]).reshape(-1)[0]))


# ------------------------------------------------------------------------------------------ stage 1
@torch.no_grad()
def stage1(model: Any, media: Media) -> Media:
    """Quantise and decode every frame with the model's stage-1 VQ-VAEs (the ceiling of stage 2)."""
    xa, xv = model.features(model.clip_from_arrays(media.faces, media.power))
    return Media(model.vq_visual.decode_frames(xv), model.vq_audio.decode_frames(xa))


@torch.no_grad()
def expected_power(model: Any, powers: Sequence[np.ndarray]) -> np.ndarray:
    """Power spectrograms (N, F) of several noise draws -> stage 1 of each, averaged in dB (the domain of
    the log-spectral distance) -> one power spectrogram (N, F): what is left when the noise is not known."""
    vq = model.vq_audio
    db = [10.0 * np.log10(vq.decode_frames(vq.encode_frames(np.asarray(p, np.float32))).astype(np.float64)
                          .clip(0) + M.LSD_EPS) for p in powers]
    return (10.0 ** (np.mean(db, 0) / 10.0) - M.LSD_EPS).clip(0).astype(np.float32)


def counterfactual_power(model: Any, seed: int, spec_a: Any, spec_b: Any, latents: Sequence[str],
                         draws: Iterable[int], n_frames: int, fps: float, speakers: dict[int, Any] | None = None,
                         sentences: dict[int, Any] | None = None) -> np.ndarray:
    """The counterfactual's power spectrogram (n_frames, F) for the given noise `draws`
    (`synth.counterfactual.counterfactual_audio`), through stage 1 and averaged in dB (`expected_power`)."""
    from avmdvae import audio as audio_mod
    from avmdvae.synth.counterfactual import counterfactual_audio

    powers = [audio_mod.power_spectrogram(torch.from_numpy(np.asarray(counterfactual_audio(
                  seed, spec_a, spec_b, latents, k, speakers=speakers, sentences=sentences), np.float32)),
                  fps=fps, n_frames=n_frames).numpy() for k in draws]
    return expected_power(model, powers)


# ------------------------------------------------------------------------------------ factor transfer
def transfers(estimate: Mapping[str, Any], truth_a: Mapping[str, np.ndarray], truth_b: Mapping[str, np.ndarray],
              n_a: int, n_b: int) -> dict[str, float]:
    """Transfer fraction per estimated factor of one output of 'A with something from B'."""
    out: dict[str, float] = {}
    idx = dis.resample_index(n_b, n_a)
    for f in dis.FACTORS:
        if f.name not in estimate or not all(k in truth_a and k in truth_b for k in f.keys):
            continue
        if f.kind == "class":
            out[f.name] = dis.transfer_class(estimate[f.name], dis.clip_label(truth_a, f),
                                             dis.clip_label(truth_b, f))
        else:
            e = np.asarray(estimate[f.name])[:n_a]
            ya = dis.frame_targets(truth_a, f, n_a)[:len(e)]
            yb = dis.frame_targets(truth_b, f, n_b)[idx][:len(e)]
            out[f.name] = dis.transfer_regression(e, ya, yb)
    return out


def transfer_summary(trials: Mapping[str, list[dict[str, float]]], names: Sequence[str]) -> dict[str, Any]:
    """dis.swap_score per latent; for "all" every factor is its own (transfer = mean s, leakage n/a)."""
    out: dict[str, Any] = {}
    for latent, rows in trials.items():
        if latent == "all":
            res = dis.swap_score(rows, "w", names)
            vals = [v for v in res["per_factor"].values() if np.isfinite(v)]
            t = float(np.mean(vals)) if vals else float("nan")
            res.update(score=t, transfer=t, leakage=float("nan"), owned=list(names))
            out[latent] = res
        else:
            out[latent] = dis.swap_score(rows, latent, names)
    return out


# ---------------------------------------------------------------------------------------------- task
def pick_pairs(records: Sequence[Any], speakers: Sequence[str], n: int, seed: int) -> list[tuple[int, int]]:
    """n (A, B) index pairs of clips of different speakers, deterministic in seed."""
    rng = np.random.default_rng([seed, 16])
    pairs: list[tuple[int, int]] = []
    if len(set(speakers)) < 2:
        return pairs
    tries = 0
    while len(pairs) < n and tries < 100 * n:
        tries += 1
        i, j = (int(x) for x in rng.choice(len(records), 2, replace=False))
        if speakers[i] != speakers[j] and (i, j) not in pairs:
            pairs.append((i, j))
    return pairs


def run(ev: Any, estimators: Any = "auto", n_train: int | None = None, n_test: int | None = None) -> dict[str, Any]:
    """The "swap" task of an avmdvae.evaluation.tasks.Evaluator (its model, corpus, options, progress).

    estimators: "auto" (load or fit the cached media estimators), a FactorEstimators, or None (skip
    the factor-transfer part). Raises ConfigError when the corpus has no synthetic source.
    """
    from avmdvae.manipulation.swap import combine
    from avmdvae.preprocess import make_cropper
    from avmdvae.synth.counterfactual import LATENTS, counterfactual_clip

    model, corpus, opt = ev.model, ev.corpus, ev.opt
    progress: Progress = getattr(ev, "progress", no_progress)
    recs, truths, specs, speakers = [], [], [], []
    found: tuple[Path, dict[str, Any]] | None = None
    if getattr(opt, "split", None) is not None:
        pool = ev.clips_of(None)
    else:  # held-out clips when the test split has >= 2 speakers, else every clip
        test = corpus.split("test")
        pool = test if len({c.speaker for c in test}) >= 2 else corpus.clips
    for rec in pool:
        if not (corpus.clip_dir(rec.clip_id) / "truth.npz").is_file():
            continue
        src = synth_source(rec.source)
        if src is None:
            continue
        if found is None:
            found = src
        elif src[0] != found[0]:
            continue
        truth = corpus.truth(rec.clip_id)
        if truth is None or not {"speaker", "emotion", "intensity", "sentence"} <= set(truth):
            continue
        recs.append(rec)
        truths.append(truth)
        speakers.append(rec.speaker)
    if found is None or not recs:
        raise ConfigError(f"corpus {corpus.root}: the swap task needs clips preprocessed from an `avmdvae synth` "
                          "corpus that is still in place (its synth.json next to the videos), to render the "
                          "counterfactuals")
    root, desc = found
    o = desc["options"]
    seed, size = int(o["seed"]), int(o["size"])
    if abs(float(o.get("fps", 30.0)) - float(corpus.params.fps)) > 1e-6:
        raise ConfigError(f"corpus {corpus.root} was preprocessed at {corpus.params.fps:g} fps but the synthetic "
                          f"source is at {o.get('fps')} fps: the counterfactuals would not line up")
    names = [s["name"] for s in desc.get("speakers", []) if isinstance(s, dict) and "name" in s]
    specs = [clip_spec(t, names) for t in truths]
    pairs = pick_pairs(recs, speakers, opt.swap_pairs, opt.seed)
    if not pairs:
        raise ConfigError("the swap task needs clips of >= 2 speakers")
    cropper = make_cropper(corpus.params)
    fps = float(corpus.params.fps)
    draws = int(getattr(opt, "swap_noise_draws", NOISE_DRAWS))

    est = estimators
    if isinstance(est, str):
        from avmdvae.evaluation.estimators import load_or_fit

        sizes = {k: v for k, v in (("n_train", n_train), ("n_test", n_test)) if v is not None}
        est = load_or_fit(o, corpus.params.to_dict(), cropper, progress=progress, **sizes)

    from avmdvae.evaluation.estimators import MediaClip, media_clip

    per_pair: dict[str, list[dict[str, Any]]] = {k: [] for k in SWAP_LATENTS}
    ceiling: dict[str, list[dict[str, Any]]] = {k: [] for k in SWAP_LATENTS}
    one_draw: dict[str, list[dict[str, Any]]] = {k: [] for k in SWAP_LATENTS}  # c from the corpus' draw alone
    one_draw_ceiling: dict[str, list[dict[str, Any]]] = {k: [] for k in SWAP_LATENTS}
    trials: dict[str, dict[str, list[dict[str, float]]]] = {"model": {k: [] for k in SWAP_LATENTS},
                                                            "counterfactual": {k: [] for k in SWAP_LATENTS}}
    shifts: dict[str, list[dict[str, dict[str, float]]]] = {k: [] for k in SWAP_LATENTS}
    hybrid: dict[str, dict[str, list[dict[str, Any]]]] = {k: {x: [] for x in MDVAE_LATENTS}
                                                          for k in ("a_with_c", "c_with_b")}
    centred = getattr(getattr(model, "mdvae", None), "centred", ())  # what the decoders read centred
    regen: dict[str, list[float]] = {"face_mse": [], "lsd_db": []}
    draw_lsd: list[float] = []  # LSD of one draw's stage-1 spectrum against the average of the others
    seen: list[Any] = []  # counterfactuals through stage 1, with their truth: estimator quality there
    spk_cache: dict[int, Any] = {}
    sen_cache: dict[int, Any] = {}
    for p, (i, j) in enumerate(pairs):
        ra, rb = recs[i], recs[j]
        ma = Media(np.array(corpus.faces(ra.clip_id)), np.array(corpus.spec(ra.clip_id), np.float32))
        mb = Media(np.array(corpus.faces(rb.clip_id)), np.array(corpus.spec(rb.clip_id), np.float32))
        la = model.encode(model.clip_from_arrays(ma.faces, ma.power))
        lb = model.encode(model.clip_from_arrays(mb.faces, mb.power))
        dec_r = model.decode(la)
        r = Media(dec_r.faces, dec_r.power)
        outs: dict[str, Media] = {}
        for latent in SWAP_LATENTS:
            lat = combine(la, lb, LATENTS if latent == "all" else [latent])
            d = model.decode(lat)
            outs[latent] = Media(d.faces, d.power)
        # regenerated A against the corpus' A (H.264 / AAC round trip, front end): a sanity check
        cf0 = counterfactual_clip(seed, specs[i], specs[j], [], size, speakers=spk_cache, sentences=sen_cache)
        m0 = media_clip(cf0.frames, cf0.audio, None, cropper, fps)
        n0 = min(len(m0.faces), len(ma.faces))
        regen["face_mse"].append(face_distance(m0.faces[:n0], ma.faces[:n0]))
        regen["lsd_db"].append(audio_distance(ma.power[:n0], m0.power[:n0]))
        for latent in SWAP_LATENTS:
            cf = counterfactual_clip(seed, specs[i], specs[j], [latent], size, speakers=spk_cache,
                                     sentences=sen_cache)
            c_media = media_clip(cf.frames, cf.audio, None, cropper, fps)
            c = c_one = stage1(model, Media(c_media.faces, c_media.power))
            if est is not None:
                seen.append(MediaClip(c.faces, c.power, cf.truth))
            if draws > 0 and "audio" in affected(latent):
                c = Media(c_one.faces, counterfactual_power(model, seed, specs[i], specs[j], [latent],
                                                            range(1, draws + 1), len(c_media.faces), fps,
                                                            spk_cache, sen_cache))
                draw_lsd.append(audio_distance(c_one.power, c.power))
            # the model's own resynthesis of the counterfactual: what a swap can score at best with
            # this model's reconstruction error (a perfect swap decodes no better than this)
            lc = model.encode(model.clip_from_arrays(c_media.faces, c_media.power))
            dec_c = model.decode(lc)
            best = Media(dec_c.faces, dec_c.power)
            n = min(len(c.faces), len(r.faces), len(outs[latent].faces), len(best.faces))
            per_pair[latent].append(pair_scores(outs[latent].head(n), r.head(n), c.head(n), latent,
                                                outs["all"].head(n)))
            ceiling[latent].append(pair_scores(best.head(n), r.head(n), c.head(n), latent))
            shifts[latent].append(code_shift(la, lb, lc, centred))
            if latent != "all":  # the swapped latent's code or the others': which one the swap misses
                for kind, lat in (("a_with_c", combine(la, lc, [latent])), ("c_with_b", combine(lc, lb, [latent]))):
                    d = model.decode(lat)
                    hm = Media(d.faces, d.power)
                    k = min(n, len(hm.faces))
                    hybrid[kind][latent].append(pair_scores(hm.head(k), r.head(k), c.head(k), latent))
            if c is not c_one:
                one_draw[latent].append(pair_scores(outs[latent].head(n), r.head(n), c_one.head(n), latent))
                one_draw_ceiling[latent].append(pair_scores(best.head(n), r.head(n), c_one.head(n), latent))
            if est is not None:
                na, nb = ra.n_frames, rb.n_frames
                for kind, media in (("model", outs[latent]), ("counterfactual", c)):
                    e = est.estimate(media.faces, media.power)
                    trials[kind][latent].append(transfers(e, truths[i], truths[j], na, nb))
        progress("swap fidelity", p + 1, len(pairs))
    out: dict[str, Any] = {"pairs": len(pairs), "clips": len(recs), "synth_root": str(root), "length": "stretch",
                           "score": "clip(1 - d(o, c) / d(r, c), -1, 1); d: face MSE (visual), "
                                    "log-spectral distance in dB (audio)",
                           "noise_draws": draws,
                           **summarise(per_pair),
                           "ceiling": (top := summarise(ceiling))["swap_fidelity"],
                           "ceiling_decomposition": top["decomposition"],
                           "code_shift": summarise_code(shifts),
                           "hybrid": {k: summarise(v)["swap_fidelity"] for k, v in hybrid.items()},
                           "regeneration": {k: M.stats(v) for k, v in regen.items()}}
    if draws > 0:  # the same scores against the corpus' own noise draw alone (the target before 2026-12-06)
        kept = {k: v for k, v in one_draw.items() if v}
        out["one_draw"] = {"swap_fidelity": summarise(kept)["swap_fidelity"],
                           "ceiling": summarise({k: one_draw_ceiling[k] for k in kept})["swap_fidelity"],
                           "lsd_to_expected_db": M.stats(draw_lsd)}
    if est is not None:
        usable = [k for k, q in est.quality.items() if q.get("usable")]
        factors = [f.name for f in dis.FACTORS
                   if any(k in usable for k in ((f.name,) if f.kind == "class" or f.name == "f0" else f.keys))]
        out["estimators"] = {"quality": est.quality, "usable": usable, "info": est.info,
                             "quality_on_stage1_counterfactuals": est.evaluate(seen),
                             "thresholds": {"r2": _r2_min(), "accuracy": _acc_min()}}
        out["factor_transfer"] = {
            "factors": factors,
            "model": transfer_summary(trials["model"], factors),
            "counterfactual": transfer_summary(trials["counterfactual"], factors),
        }
    return out


def _r2_min() -> float:
    from avmdvae.evaluation.estimators import R2_MIN

    return R2_MIN


def _acc_min() -> float:
    from avmdvae.evaluation.estimators import ACC_MIN

    return ACC_MIN


# -------------------------------------------------------------------------------------------- report
def markdown(s: Mapping[str, Any]) -> str:
    """The report.md section of the swap task's results (already JSON-cleaned: None for NaN)."""

    def f(v: Any) -> str:
        return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"

    out = [f"## Swap fidelity against the counterfactual ({s['pairs']} pairs)\n",
           "The generator renders the true \"A with latent L from B\" (c, through stage 1); the model's swap o "
           "and its resynthesis of A r give fidelity = clip(1 − d(o, c) / d(r, c), −1, 1): 1 = the "
           "counterfactual, 0 = no better than a no-op. d = face MSE (visual), log-spectral distance (audio). "
           "Leakage (modality the latent should not change) = d(o, r) / d(o_all, r).\n"]
    if s.get("noise_draws"):
        od = s.get("one_draw", {})
        out.append(f"The audio counterfactual is stage 1's spectrum averaged in dB over {s['noise_draws']} noise "
                   "draws (aspiration, frication and floor noise are not factors: one draw lies "
                   f"{f(od.get('lsd_to_expected_db', {}).get('mean'))} dB LSD from that average). The *one draw* "
                   "column scores the audio against the corpus' own draw alone.\n")
    rows = []
    for latent, v in s["swap_fidelity"].items():
        lk = s.get("leakage", {}).get(latent, {})
        top = s.get("ceiling", {}).get(latent, {})
        one = s.get("one_draw", {}).get("swap_fidelity", {}).get(latent, {})
        rows.append([latent, f(v.get("audio")), f(v.get("visual")), f(v.get("mean")), f(top.get("mean")),
                     f(one.get("audio")), ", ".join(f"{m} {f(x.get('mean'))}" for m, x in lk.items()) or "-"])
    out.append(_table(["swapped", "audio", "visual", "mean", "ceiling", "audio, one draw", "leakage"], rows))
    if s.get("ceiling"):
        out.append("Ceiling: the fidelity of the model's own resynthesis of the counterfactual, the best a "
                   "swap can score with this model's reconstruction error.\n")
    dec, top = s.get("decomposition", {}), s.get("ceiling_decomposition", {})
    rows = [[latent, m, f(v.get("along")), f(v.get("off")), f(top.get(latent, {}).get(m, {}).get("along")),
             f(top.get(latent, {}).get(m, {}).get("off"))]
            for latent, per in dec.items() for m, v in per.items()]
    if rows:
        out.append("Where a swap's error comes from: with the counterfactual's change c − r, *along* is the share of "
                   "it the swap made (0 = no-op, 1 = all) and *off* what it changed besides, in units of that "
                   "change (face pixels; dB of power). For faces fidelity = 1 − (1 − along)² − off.\n")
        out.append(_table(["swapped", "modality", "along", "off", "ceiling along", "ceiling off"], rows))
    code = s.get("code_shift", {})
    if code:
        xs = list(MDVAE_LATENTS)
        rows = [[latent] + [f"{f(code[latent].get(x, {}).get('moved'))} / {f(code[latent].get(x, {}).get('resid'))}"
                            for x in xs] for latent in (*xs, "all") if latent in code]
        out.append("Where the counterfactual's change lands in the model's code: the model encodes c, and per "
                   "latent *moved* is the share of the way from A's code to B's that c's code went, *resid* how "
                   "far off that line it lies (medians over pairs; z's as the decoders read them). A factorised "
                   "model has 1 / 0 for the swapped latent and 0 / 0 elsewhere.\n")
        out.append(_table(["swapped (c)"] + [f"{x}: moved / resid" for x in xs], rows))
    hy = s.get("hybrid", {})
    if hy.get("a_with_c"):
        rows = []
        for latent in (x for x in MDVAE_LATENTS if x in hy["a_with_c"]):
            v = hy["a_with_c"][latent]
            for m in affected(latent):
                rows.append([latent, m, f(s["swap_fidelity"].get(latent, {}).get(m)), f(v.get(m)),
                             f(hy.get("c_with_b", {}).get(latent, {}).get(m)),
                             f(s.get("ceiling", {}).get(latent, {}).get(m))])
        out.append("Which code the swap misses: *A with c's L* decodes A's code with the swapped latent taken from "
                   "c's code (the code the factor has in A's context), *c with B's L* decodes c's code with B's "
                   "latent in its place. Near the ceiling in the first and near the swap in the second: the swap "
                   "fails because B's code for the factor is not c's (the code depends on its context); the other "
                   "way round: the factor's change also lives in the other latents.\n")
        out.append(_table(["swapped", "modality", "swap", "A with c's L", "c with B's L", "ceiling"], rows))
    rg = s.get("regeneration", {})
    if rg:
        out.append(f"Regenerated A vs the corpus' A (codec and front end): face MSE "
                   f"{f(rg.get('face_mse', {}).get('mean'))}, LSD {f(rg.get('lsd_db', {}).get('mean'))} dB.\n")
    est = s.get("estimators")
    if est:
        out.append("Factor estimators (fresh generated clips, held out): "
                   + ", ".join(f"{k} {q['metric']} {f(q['value'])}" for k, q in est["quality"].items())
                   + f". Used (R² ≥ {est['thresholds']['r2']}, accuracy ≥ {est['thresholds']['accuracy']}): "
                   + (", ".join(est["usable"]) or "none") + ".\n")
        s1 = est.get("quality_on_stage1_counterfactuals") or {}
        if s1:
            out.append("The same estimators on the counterfactuals after stage 1: "
                       + ", ".join(f"{k} {f(q['value'])}" for k, q in s1.items()) + ".\n")
        ft = s.get("factor_transfer", {})
        if ft.get("factors"):
            rows = []
            for latent, m in ft["model"].items():
                cf = ft["counterfactual"].get(latent, {})
                rows.append([latent, f(m.get("score")), f(cf.get("score"))]
                            + [f(m["per_factor"].get(x)) for x in ft["factors"]])
            out.append("Factor transfer (swap score = transfer − leakage; the counterfactual column is the "
                       "ceiling):\n")
            out.append(_table(["swapped", "model", "counterfactual"] + ft["factors"], rows))
    return "\n".join(out)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


__all__ = ["MODALITIES", "Media", "NOISE_DRAWS", "SWAP_LATENTS", "affected", "audio_distance", "clip_spec",
           "code_shift", "counterfactual_power", "decompose", "distance", "expected_power", "face_distance",
           "fidelity", "markdown", "pair_scores", "pick_pairs", "run", "stage1", "summarise",
           "summarise_code", "synth_source", "transfer_summary", "transfers"]
