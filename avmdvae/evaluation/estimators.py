"""Factor estimators that read the media (face crops, power spectra), independent of any model.

The swap tests need to read the generative factors (docs/synthetic-corpus.md) back from a model's
output. These estimators are trained on freshly generated clips of the synthetic corpus' own
speakers (same seed; sentence numbers past the corpus', so no corpus clip is seen), passed through
the same front end as the corpus (face cropper, power spectrogram), and never look at the evaluated
model:

    factor (keys)                              estimator
    articulation (jaw, lip_width)             small CNN on the 64x64 face crop (all visual keys at once;
                                               trained with blur / noise augmentation)
    blink                                      "
    head_pose (yaw, pitch, roll, x, y, scale)  "
    f0 (contour, semitones re clip median)    harmonic-sum pitch tracker on the power spectrum, a
                                               logistic voicing detector on log-spectral bands
    speaker, emotion, intensity (clip labels)  logistic regression on clip-pooled media features
                                               (colour thumbnail of the face, log-spectral bands, pitch)

Each is scored on held-out fresh clips: R^2 per key (pooled over frames; the f0 contour on frames
voiced in the truth) and accuracy per label. A key is *usable* when R^2 >= R2_MIN, a label when
accuracy >= ACC_MIN; the swap tests report only usable ones. Fitted estimators are cached in
`cache_dir()` under a key of everything that determines them, as tensors and plain values only
(`torch.load(weights_only=True)`: a cache file cannot run code).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.signal import medfilt

from avmdvae import audio as audio_mod
from avmdvae.constants import Progress, no_progress
from avmdvae.evaluation import disentangle as dis

ESTIMATOR_VERSION = 3  # 2: blur / noise augmentation of the face CNN; 3: milder (blinks survive)
R2_MIN = 0.8
ACC_MIN = 0.9
VISUAL_KEYS = ("jaw", "lip_width", "blink", "head_yaw", "head_pitch", "head_roll", "head_x", "head_y",
               "head_scale")
CLASS_FACTORS = ("speaker", "emotion", "intensity")
F0_MIN, F0_MAX = 60.0, 450.0
PITCH_STEP_ST = 0.125  # candidate grid of the pitch tracker (semitones)
N_HARMONICS = 8
PITCH_SPAN_ST = 9.0  # second pass: search within this of the clip's median pitch
CNN_EPOCHS = 8
FRAME_STRIDE = 2  # train the CNN on every other frame (neighbours are near duplicates)
CNN_BATCH = 64
BLUR_SIGMA = (0.3, 1.3)  # px: Gaussian blur of augmented batches (decoded faces are smooth)
NOISE_STD = 0.02  # max pixel noise of augmented batches (in [0, 1] units)
QUALITY_BLUR = 1.5  # px: held-out quality is also measured on faces blurred this much



def cache_dir() -> Path:
    """`$AVMDVAE_CACHE/estimators`, default ~/.cache/avmdvae/estimators."""
    root = os.environ.get("AVMDVAE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "avmdvae")
    return Path(root) / "estimators"


# ------------------------------------------------------------------------------------------- audio
def log_bands(power: np.ndarray, sample_rate: int = audio_mod.SAMPLE_RATE, n_bands: int = 40) -> np.ndarray:
    """(N, F) power -> (N, n_bands) dB in bands equally spaced on a log-frequency scale, 100 Hz - 7.6 kHz."""
    p = np.asarray(power, np.float64)
    f = np.linspace(0, sample_rate / 2, p.shape[1])
    edges = np.geomspace(100.0, 0.95 * sample_rate / 2, n_bands + 1)
    out = np.empty((len(p), n_bands))
    for i in range(n_bands):
        m = (f >= edges[i]) & (f < edges[i + 1])
        if not m.any():
            m = np.abs(f - np.sqrt(edges[i] * edges[i + 1])) == np.abs(f - np.sqrt(edges[i] * edges[i + 1])).min()
        out[:, i] = p[:, m].mean(1)
    return 10 * np.log10(np.maximum(out, 1e-12))


def pitch_track(power: np.ndarray, sample_rate: int = audio_mod.SAMPLE_RATE, centre: float | None = None,
                span: float = PITCH_SPAN_ST) -> tuple[np.ndarray, np.ndarray]:
    """Harmonic-sum pitch per frame: (semitones re 1 Hz (N,), salience (N,)).

    centre: search only within +-span semitones of it (e.g. the clip's median pitch: no octave jumps).

    For each candidate f0 (60-450 Hz, 1/8-semitone grid) the salience is the mean log power (dB) at
    its first N_HARMONICS harmonics minus the mean at the midpoints between them, on the
    frame's log spectrum (linear interpolation between bins). Peaks minus valleys rejects the
    octave below (half its "harmonics" fall in valleys) and the octave above (its midpoints are
    harmonics). The best candidate is refined by a parabola through its neighbours.
    """
    p = np.asarray(power, np.float64)
    n_bins = p.shape[1]
    hz_per_bin = sample_rate / 2 / (n_bins - 1)
    ls = 10 * np.log10(np.maximum(p, 1e-12))
    ls -= ls.max(1, keepdims=True)
    ls = np.maximum(ls, -80.0)
    st = np.arange(12 * np.log2(F0_MIN), 12 * np.log2(F0_MAX) + 1e-9, PITCH_STEP_ST)
    f0 = 2 ** (st / 12)
    h = np.arange(1, N_HARMONICS + 1)

    def at(freqs: np.ndarray) -> np.ndarray:  # (C, H) Hz -> (N, C, H) interpolated dB
        b = np.clip(freqs / hz_per_bin, 0, n_bins - 1.001)
        lo = b.astype(np.int64)
        fr = b - lo
        return ls[:, lo] * (1 - fr) + ls[:, lo + 1] * fr

    peaks = at(f0[:, None] * h[None])
    valleys = at(f0[:, None] * (h[None] + 0.5))
    sal = (peaks - valleys).mean(-1)  # (N, C)
    if centre is not None:
        sal = np.where(np.abs(st - centre)[None] <= span, sal, -np.inf)
    k = np.argmax(sal, 1)
    kk = np.clip(k, 1, len(st) - 2)
    rows = np.arange(len(p))
    y0, y1, y2 = sal[rows, kk - 1], sal[rows, kk], sal[rows, kk + 1]
    y0, y2 = np.where(np.isfinite(y0), y0, y1), np.where(np.isfinite(y2), y2, y1)
    den = y0 - 2 * y1 + y2
    off = np.where(np.abs(den) > 1e-9, 0.5 * (y0 - y2) / np.where(np.abs(den) > 1e-9, den, 1.0), 0.0)
    off = np.where((k == kk), np.clip(off, -0.5, 0.5), 0.0)
    return st[k] + off * PITCH_STEP_ST, sal[rows, k]


def audio_frame_features(power: np.ndarray) -> np.ndarray:
    """Per-frame audio features for the voicing detector: log bands, salience, level."""
    bands = log_bands(power)
    _, sal = pitch_track(power)
    level = bands.max(1, keepdims=True)
    return np.concatenate([bands - level, level, sal[:, None]], 1)


# ------------------------------------------------------------------------------------------ visual
class _FaceCNN(torch.nn.Module):
    """64x64 RGB crop -> K standardised factor values (4 strided conv blocks, global pooling)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        c_in = 3
        for c in (24, 48, 64, 96):
            layers += [torch.nn.Conv2d(c_in, c, 3, stride=2, padding=1), torch.nn.BatchNorm2d(c),
                       torch.nn.ReLU()]
            c_in = c
        self.body = torch.nn.Sequential(*layers)  # 64 -> 4
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(96 * 16, 128), torch.nn.ReLU(),
                                        torch.nn.Linear(128, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _faces_tensor(faces: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(faces)).permute(0, 3, 1, 2).float().div(255.0)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (B, 3, H, W) images (separable, reflected borders)."""
    if sigma <= 0:
        return x
    r = max(1, int(np.ceil(2.5 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = torch.nn.functional.pad(x, (r, r, r, r), mode="reflect")
    x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _degrade(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Training augmentation, a third of the batches: blur, pixel noise and a contrast change (the
    model's decoded faces are smoother and noisier than the rendered crops). Stronger blur (sigma 2.5)
    erased the blinks: the CNN then learnt to ignore the eyes (held-out blink R^2 0.02)."""
    u = torch.rand(4, generator=g)
    if u[0] < 2 / 3:
        return x
    x = blur(x, float(BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * u[1]))
    x = x + torch.randn(x.shape, generator=g) * float(NOISE_STD * u[2])
    x = (x - 0.5) * float(0.85 + 0.3 * u[3]) + 0.5
    return x.clamp(0, 1)


def face_thumbnail(faces: np.ndarray) -> np.ndarray:
    """(N, 64, 64, 3) uint8 -> (N, 192) 8x8 colour thumbnail in [0, 1] (clip-label features)."""
    f = np.asarray(faces, np.float32) / 255
    n, s = len(f), f.shape[1]
    b = s // 8
    return f[:, : b * 8, : b * 8].reshape(n, 8, b, 8, b, 3).mean((2, 4)).reshape(n, -1)


# ------------------------------------------------------------------------------------------- data
@dataclass
class MediaClip:
    """What the estimators see of a clip, and its truth (None when unknown)."""

    faces: np.ndarray  # (N, 64, 64, 3) uint8 face crops
    power: np.ndarray  # (N, F) power spectrogram
    truth: Mapping[str, np.ndarray] | None = None


def _clip_features(c: MediaClip) -> np.ndarray:
    """Clip-pooled features for the label classifiers: thumbnail mean, bands mean/std, pitch stats."""
    th = face_thumbnail(c.faces)
    bands = log_bands(c.power)
    st, sal = pitch_track(c.power)
    loud = bands.max(1)
    voiced = (sal > np.percentile(sal, 60)) & (loud > np.percentile(loud, 30))
    if not voiced.any():
        voiced = np.ones(len(st), bool)
    pst = st[voiced]
    return np.concatenate([th.mean(0), th.std(0), bands.mean(0), bands.std(0),
                           [np.median(pst), np.percentile(pst, 90) - np.percentile(pst, 10), loud.mean(),
                            np.percentile(loud, 90)]])


def _r2(y: np.ndarray, p: np.ndarray) -> float:
    m = np.isfinite(y) & np.isfinite(p)
    if m.sum() < 3:
        return float("nan")
    y, p = y[m], p[m]
    ss = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - p) ** 2).sum()) / ss if ss > 0 else float("nan")


# ------------------------------------------------------------------------------------- estimators
@dataclass
class LinearClassifier:
    """A fitted standardise + logistic-regression pipeline as plain arrays (safe to store and load)."""

    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    coef: np.ndarray  # (1, D) for two classes, (C, D) for more
    intercept: np.ndarray  # (1,) or (C,)
    classes_: np.ndarray  # (C,) labels

    @classmethod
    def fit(cls, x: np.ndarray, y: Sequence[Any], c: float = 1.0, max_iter: int = 1000) -> LinearClassifier:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(x)
        lr = LogisticRegression(max_iter=max_iter, C=c).fit(scaler.transform(x), y)
        return cls(scaler.mean_, scaler.scale_, lr.coef_, lr.intercept_, lr.classes_)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, C) class probabilities, in the order of `classes_`."""
        logits = ((np.asarray(x, np.float64) - self.mean) / self.scale) @ self.coef.T + self.intercept
        if self.coef.shape[0] == 1:  # two classes: one logit for classes_[1]
            p1 = 1.0 / (1.0 + np.exp(-logits[:, 0]))
            return np.stack([1.0 - p1, p1], 1)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(x).argmax(1)]

    def to_state(self) -> dict[str, Any]:
        return {"mean": torch.from_numpy(self.mean), "scale": torch.from_numpy(self.scale),
                "coef": torch.from_numpy(self.coef), "intercept": torch.from_numpy(self.intercept),
                "classes": [c.item() if hasattr(c, "item") else c for c in self.classes_]}

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> LinearClassifier:
        return cls(*(d[k].numpy() for k in ("mean", "scale", "coef", "intercept")), np.asarray(d["classes"]))


@dataclass
class FactorEstimators:
    """Fitted estimators + their held-out quality; `estimate` reads factors from media."""

    visual_keys: tuple[str, ...] = VISUAL_KEYS
    cnn_state: dict[str, Any] | None = None
    y_mean: np.ndarray | None = None
    y_std: np.ndarray | None = None
    pitch_bias: float = 0.0
    voicing: LinearClassifier | None = None  # audio_frame_features -> voiced
    classifiers: dict[str, LinearClassifier] = field(default_factory=dict)  # clip label name -> classifier
    quality: dict[str, dict[str, Any]] = field(default_factory=dict)  # key or label -> {metric, value, ...}
    info: dict[str, Any] = field(default_factory=dict)

    # -------------------------------------------------------------------------------- fitting
    @classmethod
    def fit(cls, train: Sequence[MediaClip], test: Sequence[MediaClip], seed: int = 0,
            epochs: int = CNN_EPOCHS, progress: Progress = no_progress) -> FactorEstimators:
        est = cls()
        keys = est.visual_keys
        # ---- visual CNN, standardised multi-output regression
        x = np.concatenate([c.faces[::FRAME_STRIDE] for c in train])
        y = np.concatenate([np.stack([np.asarray(c.truth[k], np.float64)[::FRAME_STRIDE] for k in keys], 1)  # type: ignore[index]
                            for c in train])
        est.y_mean, est.y_std = y.mean(0), np.maximum(y.std(0), 1e-9)
        yt = torch.from_numpy(((y - est.y_mean) / est.y_std).astype(np.float32))
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        net = _FaceCNN(len(keys))
        opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
        steps = epochs * (-(-len(x) // CNN_BATCH))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
        net.train()
        done = 0
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=g)
            for a in range(0, len(x), CNN_BATCH):
                idx = order[a:a + CNN_BATCH]
                xb = _faces_tensor(x[idx.numpy()])
                if xb.shape[0] > 1:
                    shift = torch.randint(-2, 3, (2,), generator=g)  # small translations: crop jitter
                    xb = torch.roll(xb, (int(shift[0]), int(shift[1])), (2, 3))
                xb = _degrade(xb, g)
                loss = torch.nn.functional.smooth_l1_loss(net(xb), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                done += 1
                if done % 20 == 0:
                    progress("estimators: train face CNN", done, steps)
        est.cnn_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        est._net = None
        # ---- pitch: bias of the tracker on voiced frames; voicing detector
        fa = [audio_frame_features(c.power) for c in train]
        voiced = [np.asarray(c.truth["f0"]) > 0 for c in train]  # type: ignore[index]
        est.voicing = LinearClassifier.fit(np.concatenate(fa), np.concatenate(voiced))
        diffs = []
        for c, v in zip(train, voiced, strict=True):
            st, _ = pitch_track(c.power)
            diffs.append(st[v] - 12 * np.log2(np.asarray(c.truth["f0"], np.float64)[v]))  # type: ignore[index]
        est.pitch_bias = float(np.median(np.concatenate(diffs))) if diffs else 0.0
        # ---- clip labels
        xc = np.stack([_clip_features(c) for c in train])
        for name in CLASS_FACTORS:
            labels = [str(np.asarray(c.truth[name]).reshape(-1)[0]) for c in train]  # type: ignore[index]
            if len(set(labels)) >= 2:
                est.classifiers[name] = LinearClassifier.fit(xc, labels, c=0.5, max_iter=2000)
        est.quality = est.evaluate(test)
        est.info = {"train_clips": len(train), "test_clips": len(test), "train_frames": int(len(x)),
                    "epochs": epochs, "version": ESTIMATOR_VERSION}
        return est

    # ------------------------------------------------------------------------------- applying
    def _model(self) -> _FaceCNN:
        net = getattr(self, "_net", None)
        if net is None:
            net = _FaceCNN(len(self.visual_keys))
            net.load_state_dict(self.cnn_state)  # type: ignore[arg-type]
            net.eval()
            self._net = net
        return net

    @torch.no_grad()
    def visual(self, faces: np.ndarray, sigma: float = 0.0) -> np.ndarray:
        """(N, 64, 64, 3) uint8 -> (N, len(visual_keys)) estimated factor values (sigma: blur first)."""
        net = self._model()
        out = [net(blur(_faces_tensor(faces[a:a + 256]), sigma)).double().numpy()
               for a in range(0, len(faces), 256)]
        z = np.concatenate(out) if out else np.zeros((0, len(self.visual_keys)))
        return z * self.y_std + self.y_mean  # type: ignore[operator]

    def f0_contour(self, power: np.ndarray) -> np.ndarray:
        """(N,) estimated semitones re the median of the frames judged voiced; NaN where unvoiced.

        Two passes of the pitch tracker: the whole range, then within PITCH_SPAN_ST of the median
        over the voiced frames; a 5-frame median filter removes isolated jumps."""
        assert self.voicing is not None, "fit the estimators first"
        voiced = self.voicing.predict(audio_frame_features(power)).astype(bool)
        out = np.full(len(power), np.nan)
        if not voiced.any():
            return out
        st, _ = pitch_track(power)
        st, _ = pitch_track(power, centre=float(np.median(st[voiced])))
        st = medfilt(st, 5) - self.pitch_bias
        out[voiced] = st[voiced] - np.median(st[voiced])
        return out

    def labels(self, clip: MediaClip) -> dict[str, dict[str, float]]:
        x = _clip_features(clip)[None]
        return {name: dict(zip(map(str, clf.classes_), clf.predict_proba(x)[0], strict=True))
                for name, clf in self.classifiers.items()}

    def usable(self, key: str) -> bool:
        q = self.quality.get(key, {})
        v = q.get("value", float("nan"))
        return bool(np.isfinite(v) and v >= (ACC_MIN if q.get("metric") == "accuracy" else R2_MIN))

    def estimate(self, faces: np.ndarray, power: np.ndarray,
                 factors: Sequence[dis.Factor] = dis.FACTORS, only_usable: bool = True) -> dict[str, Any]:
        """Per factor: (N, len(keys)) per-frame estimates in the order of the factor's keys (NaN for a
        key without a usable estimator), or class probabilities {label: p} for clip labels. Factors
        with nothing usable are left out (unless only_usable=False)."""
        out: dict[str, Any] = {}
        vis = None
        clip = MediaClip(faces, power)
        lab = None
        for f in factors:
            if f.kind == "class":
                if f.name in self.classifiers and (not only_usable or self.usable(f.name)):
                    lab = lab if lab is not None else self.labels(clip)
                    out[f.name] = lab[f.name]
                continue
            cols = []
            for k in f.keys:
                if only_usable and not self.usable(k if f.name != "f0" else "f0"):
                    cols.append(np.full(len(faces), np.nan))
                elif f.name == "f0":
                    cols.append(self.f0_contour(power))
                elif k in self.visual_keys:
                    vis = vis if vis is not None else self.visual(faces)
                    cols.append(vis[:, self.visual_keys.index(k)])
                else:
                    cols.append(np.full(len(faces), np.nan))
            arr = np.stack(cols, 1)
            if np.isfinite(arr).any() or not only_usable:
                out[f.name] = arr
        return out

    def evaluate(self, test: Sequence[MediaClip]) -> dict[str, dict[str, Any]]:
        """Held-out quality: R^2 per visual key and for the f0 contour (pooled over frames), accuracy
        per clip label."""
        q: dict[str, dict[str, Any]] = {}
        if not test:
            return q
        pred = np.concatenate([self.visual(c.faces) for c in test])
        pred_b = np.concatenate([self.visual(c.faces, QUALITY_BLUR) for c in test])
        for j, k in enumerate(self.visual_keys):
            y = np.concatenate([np.asarray(c.truth[k], np.float64) for c in test])  # type: ignore[index]
            q[k] = {"metric": "r2", "value": _r2(y, pred[:, j]), "frames": int(len(y)),
                    f"r2_blur_{QUALITY_BLUR:g}px": _r2(y, pred_b[:, j])}
        ys, ps, vacc = [], [], []
        for c in test:
            y = dis.f0_contour(c.truth["f0"])  # type: ignore[index]
            p = self.f0_contour(c.power)
            ys.append(y)
            ps.append(p)
            vacc.append(np.isfinite(p) == np.isfinite(y))
        y, p = np.concatenate(ys), np.concatenate(ps)
        q["f0"] = {"metric": "r2", "value": _r2(y, p), "frames": int(np.isfinite(y).sum()),
                   "voicing_accuracy": float(np.concatenate(vacc).mean()),
                   "frames_estimated": float((np.isfinite(p) & np.isfinite(y)).sum() / max(np.isfinite(y).sum(), 1))}
        for name, clf in self.classifiers.items():
            x = np.stack([_clip_features(c) for c in test])
            want = [str(np.asarray(c.truth[name]).reshape(-1)[0]) for c in test]  # type: ignore[index]
            got = clf.predict(x)
            q[name] = {"metric": "accuracy", "value": float(np.mean([a == b for a, b in zip(got, want, strict=True)])),
                       "clips": len(test), "chance": 1.0 / max(len(clf.classes_), 1)}
        for v in q.values():
            v["usable"] = bool(np.isfinite(v["value"]) and v["value"] >= (ACC_MIN if v["metric"] == "accuracy"
                                                                           else R2_MIN))
        return q

    # ------------------------------------------------------------------------------- storing
    def to_state(self) -> dict[str, Any]:
        """Tensors, strings, numbers, lists and dicts only: loadable with torch.load(weights_only=True)."""
        assert self.voicing is not None and self.y_mean is not None and self.y_std is not None
        return {"visual_keys": list(self.visual_keys), "cnn_state": self.cnn_state,
                "y_mean": torch.from_numpy(self.y_mean), "y_std": torch.from_numpy(self.y_std),
                "pitch_bias": float(self.pitch_bias), "voicing": self.voicing.to_state(),
                "classifiers": {k: c.to_state() for k, c in self.classifiers.items()},
                "quality": json.loads(json.dumps(self.quality)), "info": json.loads(json.dumps(self.info))}

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> FactorEstimators:
        return cls(tuple(d["visual_keys"]), d["cnn_state"], d["y_mean"].numpy(), d["y_std"].numpy(),
                   float(d["pitch_bias"]), LinearClassifier.from_state(d["voicing"]),
                   {k: LinearClassifier.from_state(c) for k, c in d["classifiers"].items()},
                   dict(d["quality"]), dict(d["info"]))


# ----------------------------------------------------------------------------------- training clips
def fresh_clips(seed: int, n_speakers: int, n_clips: int, size: int, cropper: Any, fps: float,
                first_sentence: int, draw_seed: int = 0, progress: Progress = no_progress,
                what: str = "estimators: generate clips") -> Iterator[MediaClip]:
    """Clips of the corpus' speakers (seed, speaker indices < n_speakers) with new sentences
    (numbers from first_sentence), random emotion / level, through the corpus front end."""
    from avmdvae.synth.factors import (
        EMOTIONS,
        STREAM_RENDER,
        STREAM_SPEECH,
        ClipSpec,
        make_sentence,
        make_speaker,
        make_timeline,
    )
    from avmdvae.synth.generate import truth_arrays
    from avmdvae.synth.render import render_clip
    from avmdvae.synth.speech import synthesize

    rng = np.random.default_rng([draw_seed, first_sentence])
    speakers: dict[int, Any] = {}
    for i in range(n_clips):
        emo = EMOTIONS[int(rng.integers(len(EMOTIONS)))]
        spec = ClipSpec(i % n_speakers, emo, 1 if emo == "neutral" else int(rng.integers(1, 4)), first_sentence + i)
        sp = speakers.setdefault(spec.speaker, make_speaker(seed, spec.speaker))
        tl = make_timeline(seed, spec, sp, make_sentence(seed, spec.sentence))
        frames = render_clip(sp, tl, size, spec.rng(seed, STREAM_RENDER))
        audio = synthesize(tl, sp, spec.rng(seed, STREAM_SPEECH))
        yield media_clip(frames, audio, truth_arrays(spec, sp, tl, audio), cropper, fps)
        progress(what, i + 1, n_clips)


def media_clip(frames: np.ndarray, audio: np.ndarray, truth: Mapping[str, np.ndarray] | None, cropper: Any,
               fps: float) -> MediaClip:
    """Full frames + waveform -> what the corpus holds: face crops and the power spectrogram."""
    faces = cropper.crop_clip(frames, fps=fps)
    power = audio_mod.power_spectrogram(torch.from_numpy(np.asarray(audio, np.float32)), fps=fps,
                                        n_frames=len(faces)).numpy()
    return MediaClip(faces, power, truth)


def estimator_key(synth_options: Mapping[str, Any], params: Mapping[str, Any], n_train: int, n_test: int) -> str:
    blob = json.dumps({"synth": {k: synth_options.get(k) for k in ("seed", "size", "n_speakers",
                                                                    "generator_version")},
                       "params": dict(params), "n_train": n_train, "n_test": n_test,
                       "version": ESTIMATOR_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_or_fit(synth_options: Mapping[str, Any], params: Mapping[str, Any], cropper: Any, n_train: int = 240,
                n_test: int = 60, cache: Path | None = None, progress: Progress = no_progress) -> FactorEstimators:
    """Estimators for the synthetic corpus described by synth_options (its synth.json "options"),
    cropped as `params` (the corpus' PreprocessParams dict) says; from the cache when there."""
    from avmdvae.atomic import atomic_path

    key = estimator_key(synth_options, params, n_train, n_test)
    path = (cache or cache_dir()) / f"estimators-{key}.pt"
    if path.is_file():
        try:
            est = FactorEstimators.from_state(torch.load(path, map_location="cpu", weights_only=True))
            if est.info.get("version") == ESTIMATOR_VERSION:
                return est
        except Exception:  # unreadable or from another version: fit again and overwrite it
            pass
    seed, size = int(synth_options["seed"]), int(synth_options["size"])
    n_spk, fps = int(synth_options["n_speakers"]), float(params.get("fps", 30.0))
    first = int(synth_options.get("n_sentences", 0)) + 1000  # past the corpus' sentences
    train = list(fresh_clips(seed, n_spk, n_train, size, cropper, fps, first, 0, progress))
    test = list(fresh_clips(seed, n_spk, n_test, size, cropper, fps, first + n_train, 1, progress,
                            "estimators: generate held-out clips"))
    est = FactorEstimators.fit(train, test, seed=seed, progress=progress)
    est.info["cache"] = str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(est.to_state(), tmp)
    return est


__all__ = ["ACC_MIN", "FactorEstimators", "LinearClassifier", "MediaClip", "R2_MIN", "VISUAL_KEYS", "cache_dir",
           "estimator_key", "fresh_clips", "load_or_fit", "log_bands", "media_clip", "pitch_track"]
