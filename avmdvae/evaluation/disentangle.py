"""Disentanglement against ground truth: the factor matrix and the swap test.

Ground-truth factors (from a synthetic corpus' truth.npz, see avmdvae.synth) and the latent that
should carry each one by design (the MDVAE's structure):

    factor        kind         truth keys                               owner   estimated from
    speaker       clip class   speaker                                  w       both modalities
    emotion       clip class   emotion                                  w       both
    intensity     clip class   intensity                                w       both
    articulation  per frame    jaw, lip_width                           zav     both
    f0            per frame    f0 -> semitones re the clip median,      za      audio
                               voiced frames only (the contour)
    blink         per frame    blink                                    zv      visual
    head_pose     per frame    head_yaw, head_pitch, head_roll          zv      visual

The head's position and size in the frame (head_x, head_y, head_scale in the truth) are not factors
here: the face crop of the front end follows the head and normalises its size, so no model that
reads the crops can see them (media estimators on crops: held-out R^2 below 0).

Factor matrix: for each latent, a linear probe's informativeness for each factor (0 = chance,
1 = perfect; classification: rescaled balanced accuracy, regression: the mean over the factor's
targets of R^2 clipped to [0, 1], `probes.probe_regression`). Clip
factors are probed from w or time-pooled dynamical latents; per-frame factors from each frame's
latent, both the latent and the target taken as deviations from their mean over the clip
(`within_clip`): a per-frame factor is owned by what tracks it from frame to frame, and its level
in a clip (a speaker's usual mouth width, head tilt or pitch) is static, w's to carry.

Swap test: the output O of "A with latent L taken from B" is scored per factor f by the transfer
fraction s_f in [0, 1], how much O looks like B rather than A in f (`transfer_class`,
`transfer_regression`), measured by estimators trained on ground truth (probes from stage-1
features of real clips). For latent L, with owned(L) its factors above:

    transfer(L) = mean over pairs and owned factors of s_f         (should be 1)
    leakage(L)  = mean over pairs and the other factors of s_f     (should be 0)
    swap score  = transfer - leakage   in [-1, 1]: 1 for a perfect swap, 0 for a no-op (nothing
                  moves) and also 0 for copying all of B (everything moves).

Pairs where A and B have the same value of a factor carry no evidence about it (s undefined,
skipped).

The "swap" task (avmdvae.evaluation.swap) runs the same transfer fractions and swap score with
estimators that read the media instead (avmdvae.evaluation.estimators: trained on freshly generated
clips, independent of the model, used only where their held-out R^2 >= 0.8 / accuracy >= 0.9), on
the model's swaps and on the generator's counterfactuals (the ceiling).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

LATENTS = ("w", "zav", "za", "zv")


@dataclass(frozen=True)
class Factor:
    name: str
    kind: str  # "class" (one label per clip) or "frame" (per-frame continuous targets)
    keys: tuple[str, ...]
    owner: str  # the latent that should carry it
    modality: str  # features the ground-truth estimator reads: "av", "audio" or "visual"


FACTORS: tuple[Factor, ...] = (
    Factor("speaker", "class", ("speaker",), "w", "av"),
    Factor("emotion", "class", ("emotion",), "w", "av"),
    Factor("intensity", "class", ("intensity",), "w", "av"),
    Factor("articulation", "frame", ("jaw", "lip_width"), "zav", "av"),
    Factor("f0", "frame", ("f0",), "za", "audio"),
    Factor("blink", "frame", ("blink",), "zv", "visual"),
    Factor("head_pose", "frame", ("head_yaw", "head_pitch", "head_roll"), "zv", "visual"),
)
FACTOR_NAMES = tuple(f.name for f in FACTORS)


def owned(latent: str) -> list[str]:
    return [f.name for f in FACTORS if f.owner == latent]


def factor(name: str) -> Factor:
    return next(f for f in FACTORS if f.name == name)


def available_factors(truth: Mapping[str, np.ndarray]) -> list[Factor]:
    """Factors whose truth keys are all present in a clip's truth dict."""
    return [f for f in FACTORS if all(k in truth for k in f.keys)]


def f0_contour(f0: np.ndarray) -> np.ndarray:
    """f0 in Hz (0 = unvoiced) -> semitones relative to the clip's median voiced f0; NaN when unvoiced.

    Removing the clip's level keeps the intonation contour (z(a)) and drops the speaker's and the
    emotion's pitch level (w).
    """
    f0 = np.asarray(f0, np.float64)
    out = np.full(f0.shape, np.nan)
    v = f0 > 0
    if v.any():
        st = 12 * np.log2(f0[v])
        out[v] = st - np.median(st)
    return out


def frame_targets(truth: Mapping[str, np.ndarray], f: Factor, n_frames: int) -> np.ndarray:
    """(n_frames, len(keys)) float64 targets of a per-frame factor (truncated / NaN-padded to n_frames)."""
    cols = []
    for k in f.keys:
        v = np.asarray(truth[k], np.float64).reshape(-1)
        if f.name == "f0":
            v = f0_contour(v)
        col = np.full(n_frames, np.nan)
        m = min(n_frames, len(v))
        col[:m] = v[:m]
        cols.append(col)
    return np.stack(cols, 1)


def within_clip(x: np.ndarray) -> np.ndarray:
    """(N, K) per-frame values of one clip minus their mean over its frames (NaN-aware; an all-NaN column stays NaN)."""
    x = np.asarray(x, np.float64)
    n = np.isfinite(x).sum(0)
    mean = np.where(n > 0, np.nansum(x, 0) / np.maximum(n, 1), np.nan)
    return x - mean


def clip_label(truth: Mapping[str, np.ndarray], f: Factor) -> str:
    return str(np.asarray(truth[f.keys[0]]).reshape(-1)[0])


def resample_index(n_src: int, n_dst: int) -> np.ndarray:
    """Nearest-frame indices mapping a sequence of n_src frames onto n_dst (first and last kept),
    the frame-level counterpart of manipulation's default length rule ('stretch')."""
    if n_dst <= 1 or n_src <= 1:
        return np.zeros(max(n_dst, 0), np.int64)
    return np.rint(np.linspace(0, n_src - 1, n_dst)).astype(np.int64)


# ----------------------------------------------------------------------------------------- swap score
def transfer_class(proba: Mapping[str, float], label_a: str, label_b: str) -> float:
    """s = p(B's label) / (p(A's label) + p(B's label)) from an estimator's class probabilities.

    1: the output is classified as B's value; 0: as A's. nan when A and B share the label or the
    estimator gives both zero probability (e.g. a class it never saw).
    """
    if label_a == label_b:
        return float("nan")
    pa, pb = float(proba.get(label_a, 0.0)), float(proba.get(label_b, 0.0))
    if pa + pb <= 0:
        return float("nan")
    return pb / (pa + pb)


def transfer_regression(estimate: np.ndarray, truth_a: np.ndarray, truth_b: np.ndarray,
                        eps: float = 1e-12) -> float:
    """s = d_A / (d_A + d_B) with d_X the mean squared distance of the per-frame estimate to X's truth.

    Arrays (T,) or (T, K) on the output's frames (B's truth already mapped onto A's frames); NaN
    entries are ignored. 1: the output follows B's trajectory; 0: A's. nan when A and B coincide.
    """
    e, a, b = (np.asarray(v, np.float64) for v in (estimate, truth_a, truth_b))
    m = np.isfinite(e) & np.isfinite(a) & np.isfinite(b)
    if not m.any():
        return float("nan")
    if np.mean((a[m] - b[m]) ** 2) <= eps:
        return float("nan")
    da = float(np.mean((e[m] - a[m]) ** 2))
    db = float(np.mean((e[m] - b[m]) ** 2))
    return da / (da + db) if da + db > eps else float("nan")


def swap_score(transfers: Sequence[Mapping[str, float]], latent: str,
               factors: Sequence[str] | None = None) -> dict[str, Any]:
    """Summary of swap trials of one latent. transfers: one {factor: s} dict per pair (nan = skipped).

    Returns {"score": transfer - leakage, "transfer", "leakage", "per_factor": {f: mean s}, "pairs"}.
    """
    names = list(factors) if factors is not None else list(FACTOR_NAMES)
    per = {}
    for f in names:
        vals = [t[f] for t in transfers if f in t and np.isfinite(t[f])]
        per[f] = float(np.mean(vals)) if vals else float("nan")
    own = [per[f] for f in names if f in owned(latent) and np.isfinite(per[f])]
    other = [per[f] for f in names if f not in owned(latent) and np.isfinite(per[f])]
    transfer = float(np.mean(own)) if own else float("nan")
    leakage = float(np.mean(other)) if other else float("nan")
    if own and other:
        score = transfer - leakage
    elif own:
        score = transfer
    elif other:
        score = -leakage
    else:
        score = float("nan")
    return {"score": score, "transfer": transfer, "leakage": leakage, "per_factor": per,
            "pairs": len(transfers), "owned": owned(latent)}


def selectivity(matrix: Mapping[str, Mapping[str, float]], latent: str) -> float:
    """Factor-matrix summary of a latent: mean informativeness on its own factors minus on the others."""
    row = matrix[latent]
    own = [v for f, v in row.items() if f in owned(latent) and np.isfinite(v)]
    other = [v for f, v in row.items() if f not in owned(latent) and np.isfinite(v)]
    if not own:
        return float("nan")
    return float(np.mean(own) - (np.mean(other) if other else 0.0))


__all__ = ["FACTORS", "FACTOR_NAMES", "Factor", "LATENTS", "available_factors", "clip_label", "f0_contour",
           "factor", "frame_targets", "owned", "resample_index", "selectivity", "swap_score",
           "transfer_class", "transfer_regression"]
