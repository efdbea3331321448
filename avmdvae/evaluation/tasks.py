"""The four evaluation tasks of `avmdvae eval` over a preprocessed corpus.

    ev = Evaluator.load(run, corpus, dsae={"audio": run_a, "visual": run_v}, options=EvalOptions())
    ev.resynth()      -> dict   test split: STOI / PESQ (Griffin-Lim and source phase), PSNR / SSIM
    ev.emotion()      -> dict   few-label linear probes of emotion and intensity on static latents
    ev.disentangle()  -> dict   factor matrix + swap test (needs ground truth: a synthetic corpus)
    ev.denoise()      -> dict   metrics of a corrupted modality before / after, per noise type and level

Systems compared: "VQ-VAE" (stage 1 alone: quantise + decode each frame, the ceiling of any stage 2),
"VQ-MDVAE" (the run), "VQ-MDVAE (drop)" (denoise only: the corrupted modality ignored, inferred from
the other), "VQ-DSAE-audio" / "VQ-DSAE-visual" (baselines, when their runs are given).

Reference audio: the corpus stores power spectrograms, not waveforms. The clean waveform is read
from each clip's source media when it is still there; otherwise it is the Griffin-Lim inversion of
the corpus spectrogram (report.json says which, per task), and then STOI / PESQ measure the models
against that inversion rather than the original recording.

Every latent is a posterior mean (deterministic), from the models' `encode_sequence` (through AVModel
for the MDVAE, `UniModel` for a DSAE).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from avmdvae import audio as audio_mod
from avmdvae import media
from avmdvae.constants import Progress, no_progress
from avmdvae.corpus import ClipRecord, Corpus
from avmdvae.errors import AvmdvaeError, ConfigError
from avmdvae.evaluation import disentangle as dis
from avmdvae.evaluation import metrics as M
from avmdvae.evaluation import probes
from avmdvae.evaluation.baselines import UniModel
from avmdvae.evaluation.swap import NOISE_DRAWS
from avmdvae.manipulation.model import AVModel, Clip
from avmdvae.models.mdvae import Latents

TASKS = ("resynth", "emotion", "disentangle", "denoise", "swap")  # swap: avmdvae.evaluation.swap
MDVAE_NAME = "VQ-MDVAE"
VQ_NAME = "VQ-VAE"
# Default corruptions: SNRs spanning unintelligible (0 dB) to mild (20 dB); pixel noise from barely
# visible (0.05 of the range) to heavy (0.3); both occlusions.
DEFAULT_NOISE = (
    "audio:white:0", "audio:white:5", "audio:white:10", "audio:white:20",
    "audio:babble:0", "audio:babble:5", "audio:babble:10", "audio:babble:20",
    "visual:gaussian:0.05", "visual:gaussian:0.1", "visual:gaussian:0.2", "visual:gaussian:0.3",
    "visual:occlude:mouth", "visual:occlude:eyes",
)
GL_ITERS = 32  # Griffin-Lim iterations in resynth (the manipulation default is 64; halves the time)



@dataclass
class EvalOptions:
    draws: int = probes.DRAWS  # random draws per learning-curve point
    ks: tuple[int, ...] = probes.KS
    seed: int = 0
    max_clips: int | None = None  # cap on clips for emotion / disentangle (random subset fixed by seed)
    max_test_clips: int | None = None  # cap on test clips for resynth / denoise
    gl_iters: int = GL_ITERS
    noise: tuple[str, ...] = DEFAULT_NOISE
    swap_pairs: int = 16  # (A, B) pairs per swapped latent
    swap_noise_draws: int = NOISE_DRAWS  # noise draws averaged into the audio counterfactual (0: the corpus' own)
    frames_per_clip: int = 30  # frames sampled per clip for per-frame probes and estimators
    folds: int = probes.FOLDS
    # which clips every task draws from: None = each task's default (resynth, denoise and swap: the test
    # split; emotion and disentangle: every clip); a split name restricts all tasks to it; "all" = every
    # clip for all tasks (a corpus of speakers none of whom the model saw)
    split: str | None = None


# ------------------------------------------------------------------------------------------- clip codes
@dataclass
class ClipCode:
    """What the probes need of one clip: pooled stage-1 features, latents and sampled frames."""

    rec: ClipRecord
    pooled: dict[str, np.ndarray]  # "audio" (Da,), "visual" (Dv,): time-mean stage-1 features
    lat: dict[str, np.ndarray]  # w (Dw,), zav (N, 16), za (N, 8), zv (N, 4)
    dsae: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # modality -> {w, z}
    frames: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sampled frame indices
    fa: np.ndarray | None = None  # stage-1 audio features at `frames`
    fv: np.ndarray | None = None
    truth: dict[str, np.ndarray] | None = None


def _pool_z(z: np.ndarray) -> np.ndarray:
    """Time pooling of a dynamical latent (N, D) -> (2D,): mean and standard deviation over frames."""
    return np.concatenate([z.mean(0), z.std(0)])


class Evaluator:
    def __init__(self, model: AVModel, corpus: Corpus, dsae: dict[str, UniModel] | None = None,
                 options: EvalOptions | None = None, progress: Progress = no_progress) -> None:
        self.model, self.corpus = model, corpus
        self.dsae = dsae or {}
        self.opt = options or EvalOptions()
        self.progress = progress
        self.device = model.device
        self._codes: dict[str, ClipCode] = {}
        self._audio: dict[str, tuple[np.ndarray, str]] = {}
        p, q = corpus.params, model.params
        bad = p.mismatches(q, ("fps", "sample_rate", "n_fft", "face_size"))
        if bad:
            raise ConfigError(f"corpus {corpus.root} was preprocessed with other parameters than the model's "
                              f"({', '.join(bad)}): evaluate on a corpus made like the training corpus")

    @classmethod
    def load(cls, run: str | os.PathLike[str], corpus: str | os.PathLike[str],
             dsae: dict[str, str | os.PathLike[str] | None] | None = None, options: EvalOptions | None = None,
             device: str = "cpu", progress: Progress = no_progress) -> Evaluator:
        from avmdvae.training.distributed import pick_device

        dev = pick_device(device)
        model = AVModel.load(run, device=dev)
        uni = {m: UniModel.load(r, m, dev) for m, r in (dsae or {}).items() if r is not None}
        return cls(model, Corpus.open(corpus), uni, options, progress)

    # ------------------------------------------------------------------------------------ helpers
    def _subset(self, clips: list[ClipRecord], cap: int | None = -1) -> list[ClipRecord]:
        cap = self.opt.max_clips if cap == -1 else cap
        if cap is None or len(clips) <= cap:
            return clips
        rng = np.random.default_rng(self.opt.seed)
        keep = np.sort(rng.choice(len(clips), cap, replace=False))
        return [clips[i] for i in keep]

    def clips_of(self, default: str | None) -> list[ClipRecord]:
        """The clips a task draws from: EvalOptions.split if set, else `default` (a split, None = all)."""
        split = self.opt.split if self.opt.split is not None else default
        if split is None or split == "all":
            return list(self.corpus.clips)
        clips = self.corpus.split(split)
        if not clips:
            raise ConfigError(f"corpus {self.corpus.root} has no {split} split: preprocess it with a "
                              f"{split} fraction > 0, or choose another split")
        return clips

    def _test_clips(self) -> list[ClipRecord]:
        return self._subset(self.clips_of("test"), self.opt.max_test_clips)

    def reference_audio(self, rec: ClipRecord) -> tuple[np.ndarray, str]:
        """Clean waveform (S,) of a clip, S = samples of its n_frames, and where it came from."""
        if rec.clip_id in self._audio:
            return self._audio[rec.clip_id]
        n = audio_mod.num_samples_for(rec.n_frames, self.model.fps, self.model.params.sample_rate)
        try:
            wave = media.read_audio(rec.source, sample_rate=self.model.params.sample_rate)
            how = "source media"
        except (AvmdvaeError, OSError):
            power = np.asarray(self.corpus.spec(rec.clip_id), np.float32)
            wave = self.model.to_audio(power, n_iter=self.opt.gl_iters, seed=self.opt.seed)
            how = "griffin-lim of the corpus spectrogram"
        wave = np.asarray(wave, np.float32)[:n]
        wave = np.pad(wave, (0, n - len(wave)))
        self._audio[rec.clip_id] = (wave, how)
        return wave, how

    def _clip(self, rec: ClipRecord, with_audio: bool = False) -> Clip:
        faces = np.array(self.corpus.faces(rec.clip_id))  # writable copies (torch.from_numpy)
        power = np.array(self.corpus.spec(rec.clip_id), np.float32)
        wave = self.reference_audio(rec)[0] if with_audio else None
        return self.model.clip_from_arrays(faces, power, wave)

    def _latents_np(self, lat: Latents) -> dict[str, np.ndarray]:
        return {"w": lat.w[0].cpu().numpy(), "zav": lat.zav[0].cpu().numpy(), "za": lat.za[0].cpu().numpy(),
                "zv": lat.zv[0].cpu().numpy()}

    def code(self, rec: ClipRecord) -> ClipCode:
        """Encode one corpus clip (cached): stage-1 features, MDVAE and DSAE latents, sampled frames."""
        if rec.clip_id in self._codes:
            return self._codes[rec.clip_id]
        clip = self._clip(rec)
        xa, xv = self.model.features(clip)
        lat = self.model.encode_features(xa, xv)
        rng = np.random.default_rng([self.opt.seed, len(self._codes)])
        n = len(xa)
        frames = np.sort(rng.choice(n, min(n, self.opt.frames_per_clip), replace=False))
        code = ClipCode(rec, {"audio": xa.mean(0), "visual": xv.mean(0)}, self._latents_np(lat),
                        frames=frames, fa=np.array(xa[frames]), fv=np.array(xv[frames]),
                        truth=self.corpus.truth(rec.clip_id))
        for m, uni in self.dsae.items():
            run = self.model.run
            same = run is not None and run.stage1.get(m, {}).get("sha256") == uni.stage1_sha
            src = clip.power if m == "audio" else clip.faces
            own = (xa if m == "audio" else xv) if same else uni.features(src)
            dl = uni.encode(own)
            code.dsae[m] = {"w": dl.w[0].cpu().numpy(), "z": dl.z[0].cpu().numpy()}
        self._codes[rec.clip_id] = code
        return code

    def codes(self, clips: list[ClipRecord], what: str) -> list[ClipCode]:
        out = []
        for i, rec in enumerate(clips):
            out.append(self.code(rec))
            self.progress(f"{what}: encode clips", i + 1, len(clips))
        return out

    # ------------------------------------------------------------------------------------ resynth
    def _audio_scores(self, ref_wave: np.ndarray, ref_power: np.ndarray,
                      power: np.ndarray) -> dict[str, float]:
        m = self.model
        out = {"lsd_db": M.log_spectral_distance(ref_power, power)}
        for variant, phase in (("griffin_lim", None), ("source_phase", ref_wave)):
            wave = m.to_audio(power, phase_from=phase, n_iter=self.opt.gl_iters, seed=self.opt.seed)
            out[f"stoi_{variant}"] = M.stoi(ref_wave, wave, m.params.sample_rate)
            out[f"pesq_{variant}"] = M.pesq_wb(ref_wave, wave, m.params.sample_rate)
        return out

    @staticmethod
    def _face_scores(faces: np.ndarray, est: np.ndarray) -> dict[str, float]:
        """PSNR and SSIM per frame, and how much of the clip's movement est renders (`M.face_movement`)."""
        return M.face_metrics(faces, est) | M.face_movement(faces, est)

    @torch.no_grad()
    def resynth(self) -> dict[str, Any]:
        """Analysis-resynthesis of the test split by every system; mean / std / median per metric (faces: also the
        share of each clip's true movement rendered, whole crop, eye and mouth bands)."""
        m = self.model
        clips = self._test_clips()
        per: dict[str, dict[str, list[float]]] = {}
        how = set()

        def add(system: str, scores: dict[str, float]) -> None:
            d = per.setdefault(system, {})
            for k, v in scores.items():
                d.setdefault(k, []).append(float(v))

        for i, rec in enumerate(clips):
            clip = self._clip(rec, with_audio=True)
            how.add(self.reference_audio(rec)[1])
            xa, xv = m.features(clip)
            # the spectrogram itself through the same inversion: the Griffin-Lim / phase floor
            add("spectrogram (no model)", self._audio_scores(clip.audio, clip.power, clip.power))
            # stage 1 alone
            add(VQ_NAME, self._audio_scores(clip.audio, clip.power, m.vq_audio.decode_frames(xa)))
            add(VQ_NAME, self._face_scores(clip.faces, m.vq_visual.decode_frames(xv)))
            dec = m.decode(m.encode_features(xa, xv))
            add(MDVAE_NAME, self._audio_scores(clip.audio, clip.power, dec.power))
            add(MDVAE_NAME, self._face_scores(clip.faces, dec.faces))
            for mod, uni in self.dsae.items():
                src = clip.power if mod == "audio" else clip.faces
                out = uni.decode(uni.encode(uni.features(src)))
                if mod == "audio":
                    add(uni.name, self._audio_scores(clip.audio, clip.power, out))
                else:
                    add(uni.name, self._face_scores(clip.faces, out))
            self.progress("resynth", i + 1, len(clips))
        systems = {s: {k: M.stats(v) for k, v in d.items()} for s, d in per.items()}
        return {"clips": len(clips), "split": self.opt.split or "test", "reference_audio": sorted(how),
                "systems": systems, "gl_iters": self.opt.gl_iters}

    # ------------------------------------------------------------------------------------ emotion
    def _representations(self, codes: list[ClipCode]) -> dict[str, np.ndarray]:
        reps = {f"{MDVAE_NAME} w": np.stack([c.lat["w"] for c in codes])}
        for mod in self.dsae:
            reps[f"VQ-DSAE-{mod} w"] = np.stack([c.dsae[mod]["w"] for c in codes])
        reps["stage-1 features (time-pooled)"] = np.stack(
            [np.concatenate([c.pooled["audio"], c.pooled["visual"]]) for c in codes])
        return reps

    def emotion(self) -> dict[str, Any]:
        """Few-label linear probes of emotion category and intensity, speaker-disjoint."""
        labelled = [c for c in self.clips_of(None) if c.emotion is not None or c.intensity is not None]
        clips = self._subset(labelled)
        if not clips:
            raise ConfigError("no clip of the corpus has an emotion label: the emotion task needs a labelled "
                              "corpus (MEAD, RAVDESS, or `avmdvae synth`)")
        codes = self.codes(clips, "emotion")
        out: dict[str, Any] = {"clips": len(codes), "speakers": len({c.rec.speaker for c in codes}),
                               "draws": self.opt.draws, "targets": {}}
        steps = [(t, r) for t in ("emotion", "intensity") for r in self._representations(codes)]
        done = 0
        for target in ("emotion", "intensity"):
            have = [i for i, c in enumerate(codes) if getattr(c.rec, target) is not None]
            labels = [str(getattr(codes[i].rec, target)) for i in have]
            groups = [codes[i].rec.speaker for i in have]
            entry: dict[str, Any] = {"representations": {}}
            if len(set(labels)) < 2 or len(set(groups)) < 2:
                entry["skipped"] = f"needs >= 2 {target} classes and >= 2 speakers among labelled clips"
                done += len(self._representations(codes))
            else:
                for name, x in self._representations(codes).items():
                    entry["representations"][name] = probes.learning_curve(
                        x[have], labels, groups, self.opt.ks, self.opt.draws, self.opt.seed)
                    done += 1
                    self.progress("emotion probes", done, len(steps))
            out["targets"][target] = entry
        return out

    # ------------------------------------------------------------------------------------ disentangle
    def _truth_clips(self) -> list[ClipRecord]:
        clips = [c for c in self.clips_of(None) if (self.corpus.clip_dir(c.clip_id) / "truth.npz").is_file()]
        if not clips:
            raise ConfigError(f"corpus {self.corpus.root} has no ground truth (truth.npz): the disentangle "
                              "task needs a synthetic corpus (`avmdvae synth`, then `avmdvae preprocess`)")
        return self._subset(clips)

    def _stage1_x(self, codes: list[ClipCode], modality: str, per_frame: bool) -> np.ndarray:
        def one(c: ClipCode) -> np.ndarray:
            if per_frame:
                parts = {"audio": c.fa, "visual": c.fv}
            else:
                parts = {"audio": c.pooled["audio"][None], "visual": c.pooled["visual"][None]}
            keys = ("audio", "visual") if modality == "av" else (modality,)
            return np.concatenate([parts[k] for k in keys], -1)

        return np.concatenate([one(c) for c in codes])

    def factor_matrix(self, codes: list[ClipCode], factors: list[dis.Factor]) -> dict[str, Any]:
        """Probe informativeness of each latent (and of stage-1 features, for reference) per factor."""
        rows = [*dis.LATENTS, "stage-1"]
        matrix: dict[str, dict[str, float]] = {r: {} for r in rows}
        detail: dict[str, dict[str, Any]] = {r: {} for r in rows}
        speakers = [c.rec.speaker for c in codes]
        total, done = len(rows) * len(factors), 0
        for f in factors:
            if f.kind == "class":
                y = [dis.clip_label(c.truth, f) for c in codes]  # type: ignore[arg-type]
                groups = None if f.name == "speaker" else speakers  # speaker id: clip-level split
                for r in rows:
                    if r == "stage-1":
                        x = self._stage1_x(codes, f.modality, per_frame=False)
                    elif r == "w":
                        x = np.stack([c.lat["w"] for c in codes])
                    else:
                        x = np.stack([_pool_z(c.lat[r]) for c in codes])
                    if len(set(y)) < 2:
                        res: dict[str, Any] = {"informativeness": float("nan"), "skipped": "one class only"}
                    else:
                        res = probes.probe_classification(x, y, groups, self.opt.folds,
                                                          self.opt.seed).to_dict()
                    matrix[r][f.name] = res["informativeness"]
                    detail[r][f.name] = res
                    done += 1
                    self.progress("factor matrix", done, total)
            else:
                # within each clip: a frame's deviation from the clip's mean (see dis.within_clip)
                y = np.concatenate([dis.within_clip(dis.frame_targets(c.truth, f, c.rec.n_frames)[c.frames])  # type: ignore[arg-type]
                                    for c in codes])
                groups_f = np.concatenate([[c.rec.speaker] * len(c.frames) for c in codes])
                for r in rows:
                    if r == "stage-1":
                        x = np.concatenate([dis.within_clip(self._stage1_x([c], f.modality, per_frame=True))
                                            for c in codes])
                    elif r == "w":  # constant in a clip: nothing left within it (informativeness 0)
                        x = np.zeros((len(y), len(codes[0].lat["w"])))
                    else:
                        x = np.concatenate([dis.within_clip(c.lat[r][c.frames]) for c in codes])
                    res = probes.probe_regression(x, y, groups_f, self.opt.folds, self.opt.seed)
                    matrix[r][f.name] = res["informativeness"]
                    detail[r][f.name] = res
                    done += 1
                    self.progress("factor matrix", done, total)
        return {"matrix": matrix, "detail": detail}

    def _fit_estimators(self, codes: list[ClipCode], factors: list[dis.Factor]) -> dict[str, Any]:
        """Ground-truth estimators from stage-1 features of real clips, one per factor."""
        est: dict[str, Any] = {}
        for f in factors:
            if f.kind == "class":
                x = self._stage1_x(codes, f.modality, per_frame=False)
                y = [dis.clip_label(c.truth, f) for c in codes]  # type: ignore[arg-type]
                if len(set(y)) >= 2:
                    est[f.name] = probes.fit_classifier(x, y)
            else:
                x = self._stage1_x(codes, f.modality, per_frame=True)
                y = np.concatenate([dis.frame_targets(c.truth, f, c.rec.n_frames)[c.frames]  # type: ignore[arg-type]
                                    for c in codes])
                models = []
                for j in range(y.shape[1]):
                    ok = np.isfinite(y[:, j])
                    models.append(probes.fit_regressor(x[ok], y[ok, j]) if ok.sum() > 2 else None)
                est[f.name] = models
        return est

    def _estimate(self, est: dict[str, Any], factors: list[dis.Factor], faces: np.ndarray,
                  power: np.ndarray) -> dict[str, Any]:
        """Apply the estimators to decoded media: class probabilities / per-frame estimates per factor."""
        fa = self.model.vq_audio.encode_frames(power)
        fv = self.model.vq_visual.encode_frames(faces)
        parts = {"audio": fa, "visual": fv}
        out: dict[str, Any] = {}
        for f in factors:
            if f.name not in est:
                continue
            keys = ("audio", "visual") if f.modality == "av" else (f.modality,)
            if f.kind == "class":
                x = np.concatenate([parts[k].mean(0) for k in keys])[None]
                clf = est[f.name]
                out[f.name] = dict(zip(map(str, clf.classes_), clf.predict_proba(x)[0], strict=True))
            else:
                x = np.concatenate([parts[k] for k in keys], -1)
                cols = [r.predict(x) if r is not None else np.full(len(x), np.nan) for r in est[f.name]]
                out[f.name] = np.stack(cols, 1)
        return out

    @staticmethod
    def transfers(estimate: dict[str, Any], factors: list[dis.Factor], truth_a: dict[str, np.ndarray],
                  truth_b: dict[str, np.ndarray], n_a: int, n_b: int) -> dict[str, float]:
        """Transfer fraction per factor of one output of 'A with something from B'."""
        out = {}
        idx = dis.resample_index(n_b, n_a)
        for f in factors:
            if f.name not in estimate:
                continue
            if f.kind == "class":
                out[f.name] = dis.transfer_class(estimate[f.name], dis.clip_label(truth_a, f),
                                                 dis.clip_label(truth_b, f))
            else:
                ya = dis.frame_targets(truth_a, f, n_a)
                yb = dis.frame_targets(truth_b, f, n_b)[idx]
                e = estimate[f.name][:n_a]
                out[f.name] = dis.transfer_regression(e, ya[:len(e)], yb[:len(e)])
        return out

    def _pairs(self, swap_set: list[ClipCode]) -> list[tuple[ClipCode, ClipCode]]:
        rng = np.random.default_rng(self.opt.seed + 1)
        pairs = []
        tries = 0
        while len(pairs) < self.opt.swap_pairs and tries < 50 * self.opt.swap_pairs:
            tries += 1
            i, j = rng.choice(len(swap_set), 2, replace=False)
            a, b = swap_set[i], swap_set[j]
            if a.rec.speaker != b.rec.speaker:
                pairs.append((a, b))
        return pairs

    @torch.no_grad()
    def disentangle(self) -> dict[str, Any]:
        """Factor matrix on all clips with ground truth, and the swap test on held-out pairs."""
        from avmdvae.manipulation.swap import combine

        clips = self._truth_clips()
        codes = self.codes(clips, "disentangle")
        factors = [f for f in dis.FACTORS if all(f in dis.available_factors(c.truth) for c in codes)]  # type: ignore[arg-type]
        if not factors:
            raise ConfigError("the corpus' truth.npz files carry none of the known factors")
        fm = self.factor_matrix(codes, factors)

        # swap set: about a quarter of each speaker's clips (>= 1, and never all of them); the
        # estimators are trained on the other clips, so they know every speaker but not these clips
        rng = np.random.default_rng(self.opt.seed)
        by_spk: dict[str, list[ClipCode]] = {}
        for c in codes:
            by_spk.setdefault(c.rec.speaker, []).append(c)
        swap_set: list[ClipCode] = []
        for cs in by_spk.values():
            if len(cs) >= 2:
                k = max(1, len(cs) // 4)
                swap_set += [cs[i] for i in rng.choice(len(cs), k, replace=False)]
        held = {c.rec.clip_id for c in swap_set}
        train = [c for c in codes if c.rec.clip_id not in held]
        out: dict[str, Any] = {"clips": len(codes), "factors": [f.name for f in factors],
                               "owners": {f.name: f.owner for f in factors}, **fm}
        pairs = self._pairs(swap_set) if len(by_spk) >= 2 else []
        if not pairs or len(train) < 4:
            out["swap"] = {"skipped": "needs >= 2 speakers with >= 2 clips each"}
        else:
            est = self._fit_estimators(train, factors)
            # estimator quality on the held-out real clips (the ceiling of what the swap test can see)
            quality = {}
            for f in factors:
                if f.name not in est:
                    continue
                vals = []
                for c in swap_set:
                    clip = self._clip(c.rec)
                    e = self._estimate(est, [f], clip.faces, clip.power)[f.name]
                    if f.kind == "class":
                        vals.append(float(max(e, key=e.get) == dis.clip_label(c.truth, f)))  # type: ignore[arg-type]
                    else:
                        y = dis.frame_targets(c.truth, f, c.rec.n_frames)  # type: ignore[arg-type]
                        r2 = [probes.r2_score(y[:, j], e[:, j]) for j in range(y.shape[1])]
                        vals.append(float(np.nanmean(r2)))
                quality[f.name] = {"metric": "accuracy" if f.kind == "class" else "r2", **M.stats(vals)}
            trials: dict[str, list[dict[str, float]]] = {k: [] for k in ("none", *dis.LATENTS)}
            m = self.model
            for p, (a, b) in enumerate(pairs):
                la, lb = (self._latents_t(x) for x in (a, b))
                for name in trials:
                    lat = la if name == "none" else combine(la, lb, [name])
                    dec = m.decode(lat)
                    e = self._estimate(est, factors, dec.faces, dec.power)
                    trials[name].append(self.transfers(e, factors, a.truth, b.truth,  # type: ignore[arg-type]
                                                       a.rec.n_frames, b.rec.n_frames))
                self.progress("swap test", p + 1, len(pairs))
            names = [f.name for f in factors]
            out["swap"] = {"pairs": len(pairs), "estimator_quality": quality,
                           "latents": {k: dis.swap_score(v, k, names) for k, v in trials.items()
                                       if k != "none"},
                           "control_no_swap": dis.swap_score(trials["none"], "none", names)}
        out["summary"] = {
            k: {"swap_score": out["swap"].get("latents", {}).get(k, {}).get("score", float("nan")),
                "selectivity": dis.selectivity(fm["matrix"], k)} for k in dis.LATENTS}
        return out

    def _latents_t(self, c: ClipCode) -> Latents:
        d = self.device
        return Latents(*(torch.from_numpy(c.lat[k]).to(d)[None] for k in ("w", "zav", "za", "zv")))

    # ------------------------------------------------------------------------------------ denoise
    def denoise(self) -> dict[str, Any]:
        """Corrupt one modality of test clips; score it before and after each system."""
        from avmdvae.manipulation import noise as noise_mod

        m = self.model
        specs = [noise_mod.parse_noise(s) for s in self.opt.noise]
        clips = self._test_clips()
        voices: list[np.ndarray] = []
        if any(s.kind == "babble" for s in specs):
            voices = noise_mod.corpus_voices(str(self.corpus.root), seed=self.opt.seed)
        conditions = []
        total = len(specs) * len(clips)
        how = set()
        for si, spec in enumerate(specs):
            per: dict[str, dict[str, list[float]]] = {}

            def add(system: str, scores: dict[str, float], per=per) -> None:
                d = per.setdefault(system, {})
                for k, v in scores.items():
                    d.setdefault(k, []).append(float(v))

            for ci, rec in enumerate(clips):
                clean = self._clip(rec, with_audio=spec.modality == "audio")
                rng = np.random.default_rng([self.opt.seed, si, ci])
                if spec.modality == "audio":
                    how.add(self.reference_audio(rec)[1])
                    wave = noise_mod.add_audio_noise(clean.audio, spec, rng, voices or None)
                    power = audio_mod.power_spectrogram(torch.from_numpy(wave), fps=m.fps,
                                                        n_frames=clean.n_frames).numpy()
                    noisy = Clip(clean.faces, power, wave, clean.fps, clean.source)

                    def score(p: np.ndarray, clean=clean, noisy=noisy) -> dict[str, float]:
                        w = m.to_audio(p, phase_from=noisy.audio)
                        return {"stoi": M.stoi(clean.audio, w, m.params.sample_rate),
                                "pesq": M.pesq_wb(clean.audio, w, m.params.sample_rate),
                                "lsd_db": M.log_spectral_distance(clean.power, p)}

                    before = {"stoi": M.stoi(clean.audio, wave, m.params.sample_rate),
                              "pesq": M.pesq_wb(clean.audio, wave, m.params.sample_rate),
                              "lsd_db": M.log_spectral_distance(clean.power, power)}
                else:
                    noisy = Clip(noise_mod.corrupt_faces(clean.faces, spec, rng), clean.power, clean.audio,
                                 clean.fps, clean.source)
                    hit = {"region": noise_mod.corrupted_region(spec)}

                    def score(f: np.ndarray, clean=clean, hit=hit) -> dict[str, float]:
                        return M.face_metrics(clean.faces, f) | M.face_movement(clean.faces, f, hit)

                    before = score(noisy.faces)
                add("corrupted input", before)
                mod = spec.modality
                pick = (lambda d: d.power) if mod == "audio" else (lambda d: d.faces)
                xa, xv = m.features(noisy)
                add(MDVAE_NAME, score(pick(m.decode(m.encode_features(xa, xv)))))
                add(f"{MDVAE_NAME} (drop)", score(pick(m.decode(m.encode(noisy, drop=mod)))))  # type: ignore[arg-type]
                vq = m.vq_audio if mod == "audio" else m.vq_visual
                add(VQ_NAME, score(vq.decode_frames(xa if mod == "audio" else xv)))
                if mod in self.dsae:
                    uni = self.dsae[mod]
                    src = noisy.power if mod == "audio" else noisy.faces
                    add(uni.name, score(uni.decode(uni.encode(uni.features(src)))))
                self.progress("denoise", si * len(clips) + ci + 1, total)
            conditions.append({"noise": str(spec), "modality": spec.modality, "kind": spec.kind,
                               "level": spec.value,
                               "systems": {s: {k: M.stats(v) for k, v in d.items()} for s, d in per.items()}})
        return {"clips": len(clips), "split": self.opt.split or "test", "reference_audio": sorted(how),
                "conditions": conditions,
                "audio_output": "decoded power spectrogram with the noisy input's phase"}

    # ------------------------------------------------------------------------------------ swap
    def swap(self) -> dict[str, Any]:
        """Swap fidelity against the generator's counterfactual (avmdvae.evaluation.swap.run)."""
        from avmdvae.evaluation import swap as swap_mod

        return swap_mod.run(self)

    # ------------------------------------------------------------------------------------ all
    def run(self, tasks: Sequence[str]) -> dict[str, Any]:
        """Run the named tasks; a task that cannot run on this corpus is recorded under "skipped"."""
        unknown = set(tasks) - set(TASKS)
        if unknown:
            raise ConfigError(f"unknown task(s) {', '.join(sorted(unknown))}: choose from {', '.join(TASKS)}")
        out: dict[str, Any] = {"skipped": {}}
        for t in TASKS:
            if t not in tasks:
                continue
            try:
                out[t] = getattr(self, t)()
            except ConfigError as e:
                if len(tasks) == 1:
                    raise
                out["skipped"][t] = str(e)
        return out


__all__ = ["DEFAULT_NOISE", "EvalOptions", "Evaluator", "TASKS", "UniModel"]
