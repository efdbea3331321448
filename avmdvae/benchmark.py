"""The quality benchmark: does every latent carry its factor, on speakers the models never saw?

    synth (100 speakers -> 80 train / 10 validation / 10 test, speaker-disjoint)  +  synth of another seed
    (8 new speakers)  ->  preprocess both  ->  train the recipe (two VQ-VAEs, the VQ-MDVAE, the two
    VQ-DSAE baselines)  ->  evaluate on the test speakers and on every new speaker (resynth, emotion,
    disentangle, swap)  ->  OUT/summary.md: each target of the benchmark, measured, met or not.

Everything lands in OUT; a re-run resumes (finished corpora and runs are kept). Profiles:
- "cpu": the recipe sized for a 2-core CPU (at most 100 minutes end to end, `make bench-quality`);
- "gpu": the paper's reference sizes, for a CUDA machine;
- "tiny": a toy of the same steps for the tests (seconds; the figures mean nothing).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from avmdvae import atomic
from avmdvae.constants import Progress, no_progress
from avmdvae.errors import AvmdvaeError, ConfigError

REPO_MODELS = Path(__file__).resolve().parent.parent / "models"
EMOTIONS = ("neutral", "happy", "sad", "angry")
Step = Callable[[str], None]


@dataclass(frozen=True)
class CorpusSpec:
    """Arguments of `synth.generate_corpus`: speakers x (1 neutral + emotions x levels) x sentences clips."""

    n_speakers: int
    n_sentences: int = 3
    emotions: tuple[str, ...] = EMOTIONS
    levels: tuple[int, ...] = (1, 2, 3)
    seed: int = 0


@dataclass(frozen=True)
class Profile:
    """A recipe: the two corpora, one config (+ `--set` overrides) per run, and evaluation sizes."""

    name: str
    corpus: CorpusSpec  # trained on its train split, evaluated on its test split
    new_speakers: CorpusSpec  # another seed: every speaker is new, all of its clips are evaluated
    configs: dict[str, str]  # run name -> config file under models/
    overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)  # run name -> --set items
    swap_pairs: int = 16
    max_clips: int | None = None  # emotion / disentangle clip cap per corpus
    max_test_clips: int | None = 40  # resynth clip cap
    draws: int = 10
    ks: tuple[int, ...] = (1, 2, 5, 10, 20)
    tasks: tuple[str, ...] = ("resynth", "emotion", "disentangle", "swap")


# run name -> (kind, modality); the order is the training order (stage 1 before what reads it)
RUNS = {"vqvae-audio": ("vqvae", "audio"), "vqvae-visual": ("vqvae", "visual"), "mdvae": ("mdvae", None),
        "dsae-audio": ("dsae", "audio"), "dsae-visual": ("dsae", "visual")}

# 100 speakers: VAL_FRACTION = TEST_FRACTION = 0.1 of them -> 10 validation, 10 test, 80 training speakers
# (the benchmark asks for >= 30), each with neutral and the three emotions at intensity 2:
# 100 x (1 + 3 x 1) x 3 = 1,200 clips of 3-4 s, 115,023 frames. Speakers rather than clips per
# speaker: at these 1,200 clips, 80 training speakers instead of 32 (with 30 clips each) lift the MDVAE's
# face on unseen speakers by 1.8 dB (docs/results.md, ablation e31). Intensity varies in the new-speaker
# corpus, which has every level.
BENCH_CORPUS = CorpusSpec(n_speakers=100, levels=(2,), seed=0)
NEW_SPEAKERS = CorpusSpec(n_speakers=8, seed=1)  # 240 clips of 8 speakers drawn with another seed

PROFILES: dict[str, Profile] = {
    "cpu": Profile("cpu", BENCH_CORPUS, NEW_SPEAKERS,
                   {name: f"bench-{name}.yaml" for name in RUNS}),
    "gpu": Profile("gpu", BENCH_CORPUS, NEW_SPEAKERS,
                   {"vqvae-audio": "vqvae-audio.yaml", "vqvae-visual": "vqvae-visual.yaml",
                    "mdvae": "mdvae.yaml", "dsae-audio": "dsae-audio.yaml", "dsae-visual": "dsae-visual.yaml"}),
    "tiny": Profile("tiny", CorpusSpec(n_speakers=4, n_sentences=1, emotions=("neutral", "happy"), levels=(3,)),
                    CorpusSpec(n_speakers=3, n_sentences=1, emotions=("neutral", "happy"), levels=(3,), seed=1),
                    {"vqvae-audio": "tiny/vqvae-audio.yaml", "vqvae-visual": "tiny/vqvae-visual.yaml",
                     "mdvae": "tiny/mdvae.yaml", "dsae-audio": "tiny/dsae-audio.yaml",
                     "dsae-visual": "tiny/dsae-visual.yaml"},
                    overrides={name: ("train.epochs=1",) for name in RUNS},
                    swap_pairs=2, max_clips=12, max_test_clips=2, draws=2, ks=(1, 2),
                    tasks=("resynth", "emotion", "disentangle")),  # swap: its estimators take minutes to fit
}


# ------------------------------------------------------------------------------------------ targets
@dataclass(frozen=True)
class Target:
    name: str
    threshold: float
    measure: Callable[[dict[str, Any]], float | None]  # report.json of one evaluation -> the figure


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def face_psnr(system: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda r: _get(r, "resynth", "systems", system, "psnr", "mean")


def swap_mean(latent: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda r: _get(r, "swap", "swap_fidelity", latent, "mean")


def owner_margin(r: dict[str, Any]) -> float | None:
    """Factor matrix: min over factors of (informativeness of the owning latent - best other latent).
    > 0 when every factor is best predicted by the latent that owns it."""
    matrix = _get(r, "disentangle", "matrix")
    owners = _get(r, "disentangle", "owners")
    if not isinstance(matrix, dict) or not isinstance(owners, dict) or not owners:
        return None
    margins = []
    for factor, owner in owners.items():
        scores = {lat: row.get(factor) for lat, row in matrix.items() if lat in ("w", "zav", "za", "zv")}
        scores = {k: v for k, v in scores.items() if isinstance(v, (int, float))}
        if owner not in scores:
            continue
        others = [v for k, v in scores.items() if k != owner]
        margins.append(scores[owner] - max(others, default=0.0))
    return min(margins) if margins else None


def emotion_ratio(k: int = 10) -> Callable[[dict[str, Any]], float | None]:
    """Emotion accuracy from the VQ-MDVAE's w with k labels per class / the better unimodal baseline's."""
    def measure(r: dict[str, Any]) -> float | None:
        reps = _get(r, "emotion", "targets", "emotion", "representations") or {}

        def acc(name: str) -> float | None:
            for point in (reps.get(name) or {}).get("points", []):
                if point.get("k") == k:
                    return _get(point, "accuracy", "mean")
            return None

        mine = acc("VQ-MDVAE w")
        base = [a for a in (acc("VQ-DSAE-audio w"), acc("VQ-DSAE-visual w")) if a is not None]
        if mine is None or not base or max(base) <= 0:
            return None
        return mine / max(base)
    return measure


def targets(profile: str) -> list[Target]:
    psnr = 30.0 if profile == "gpu" else 27.0
    return [Target(f"stage-1 face PSNR (dB) >= {psnr:g}", psnr, face_psnr("VQ-VAE")),
            Target("swap fidelity w >= 0.8", 0.8, swap_mean("w")),
            Target("swap fidelity z(av) >= 0.8", 0.8, swap_mean("zav")),
            Target("swap fidelity z(a) >= 0.6", 0.6, swap_mean("za")),
            Target("swap fidelity z(v) >= 0.6", 0.6, swap_mean("zv")),
            Target("factor matrix: owner's margin > 0", 0.0, owner_margin),
            Target("emotion from w, 10 labels: ratio to best unimodal >= 1.2", 1.2, emotion_ratio(10))]


def score(profile: str, reports: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per target: the figure on each evaluation corpus, and whether all of them meet it."""
    rows = []
    for t in targets(profile):
        values = {name: t.measure(r) for name, r in reports.items()}
        ok = bool(values) and all(v is not None and (v > t.threshold if t.threshold == 0.0 else v >= t.threshold)
                                  for v in values.values())
        rows.append({"target": t.name, "threshold": t.threshold, "values": values, "met": ok})
    return rows


def summary_markdown(profile: str, rows: list[dict[str, Any]], timings: dict[str, float],
                     extra: dict[str, dict[str, Any]]) -> str:
    names = list(rows[0]["values"]) if rows else []
    lines = [f"# Quality benchmark, profile `{profile}`", "",
             "| target | " + " | ".join(names) + " | met |", "|---|" + "---:|" * len(names) + "---|"]
    for row in rows:
        cells = ["n/a" if v is None else f"{v:.3f}" for v in row["values"].values()]
        lines.append(f"| {row['target']} | " + " | ".join(cells) + f" | {'yes' if row['met'] else '**no**'} |")
    lines += ["", "## Reconstruction and swaps (means)", ""]
    for name, figures in extra.items():
        lines.append(f"- **{name}**: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()
                                                    if isinstance(v, (int, float))))
    lines += ["", "## Time per step (s)", "", "| step | wall s |", "|---|---:|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    lines += ["", f"Total: {sum(timings.values()) / 60:.1f} min.", ""]
    return "\n".join(lines)


def headline(r: dict[str, Any]) -> dict[str, Any]:
    """The figures next to the targets: resynthesis of every system and swap fidelity per latent."""
    out: dict[str, Any] = {}
    for system, metrics in (_get(r, "resynth", "systems") or {}).items():
        for m in ("psnr", "stoi_griffin_lim", "lsd_db"):
            v = _get(metrics, m, "mean")
            if v is not None:
                out[f"{system}: {m}"] = v
    for lat, v in (_get(r, "swap", "swap_fidelity") or {}).items():
        if isinstance(v, dict) and isinstance(v.get("mean"), (int, float)):
            out[f"swap {lat}"] = v["mean"]
    return out


# ------------------------------------------------------------------------------------------ steps
def _corpus(root: Path, spec: CorpusSpec, workers: int, progress: Progress) -> Path:
    from avmdvae.demo import _preprocess
    from avmdvae.preprocess import available_cpus
    from avmdvae.synth.generate import generate_corpus

    src, dst = root / "synth", root / "corpus"
    generate_corpus(src, n_speakers=spec.n_speakers, n_sentences=spec.n_sentences, emotions=spec.emotions,
                    levels=spec.levels, seed=spec.seed, workers=workers or available_cpus(),
                    progress=lambda done, total: progress("synth", done, total))
    return _preprocess(src, dst, workers, progress)


def _config_path(name: str) -> Path:
    path = REPO_MODELS / name
    if not path.is_file():
        raise ConfigError(f"the benchmark recipe needs {path}, which is missing: run from a repository checkout")
    return path


def train_recipe(corpus: Path, runs: Path, profile: Profile, device: str = "auto",
                 step: Step = print, progress: bool = True) -> dict[str, float]:
    """Train every run of the recipe into runs/<name> (finished runs are kept). Returns wall s per run."""
    from avmdvae.training.config import resolve
    from avmdvae.training.loop import RunOptions, train
    from avmdvae.training.tasks import DSAETask, MDVAETask, VQVAETask

    timings: dict[str, float] = {}
    for name, (kind, modality) in RUNS.items():
        run = runs / name
        if (run / "best.pt").is_file() and (run / "finished").is_file():
            step(f"   {name}: already trained, kept")
            continue
        cfg = resolve(kind, modality, _config_path(profile.configs[name]), list(profile.overrides.get(name, ())))
        if kind == "vqvae":
            task: Any = VQVAETask(corpus, modality, cfg)
        elif kind == "mdvae":
            task = MDVAETask(corpus, runs / "vqvae-audio", runs / "vqvae-visual", cfg)
        else:
            task = DSAETask(corpus, modality, runs / f"vqvae-{modality}", cfg)
        step(f"   training {name} ({profile.configs[name]})")
        t0 = time.time()
        resume = (run / "last.pt").is_file()
        result = train(task, run, RunOptions(device=device, resume=resume, progress=progress))
        if result.stopped is not None:  # a signal or a budget: saved, not finished; a re-run resumes it
            raise AvmdvaeError(f"training {name} stopped ({result.stopped}) at step {result.step}, its state saved "
                               f"in {run}: run the same command again to resume it")
        timings[f"train {name}"] = time.time() - t0
        atomic.write_text(run / "finished", f"{timings[f'train {name}']:.0f} s\n")
    return timings


def evaluate(runs: Path, corpus: Path, split: str, profile: Profile, out: Path, device: str,
             progress: Progress) -> dict[str, Any]:
    from avmdvae.evaluation.report import write_report
    from avmdvae.evaluation.tasks import EvalOptions, Evaluator

    opts = EvalOptions(draws=profile.draws, ks=profile.ks, max_clips=profile.max_clips,
                       max_test_clips=profile.max_test_clips, swap_pairs=profile.swap_pairs, split=split)
    ev = Evaluator.load(runs / "mdvae", corpus, {"audio": runs / "dsae-audio", "visual": runs / "dsae-visual"},
                        opts, device, progress)
    results = ev.run(list(profile.tasks))
    write_report(out, results)
    return results


def run_benchmark(out: str | Path, profile: str = "cpu", workers: int = 0, device: str = "auto",
                  step: Step = print, progress: Progress = no_progress, train_progress: bool = True) -> dict[str, Any]:
    """All of the benchmark into `out`; returns the summary written to out/summary.json and .md."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown benchmark profile {profile!r}: choose from {', '.join(PROFILES)}")
    prof = PROFILES[profile]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(label: str, fn: Callable[[], Any]) -> Any:
        t0 = time.time()
        value = fn()
        timings[label] = time.time() - t0
        return value

    step(f"1/4 benchmark corpus: {prof.corpus.n_speakers} speakers, seed {prof.corpus.seed} (synth + preprocess)")
    corpus = timed("corpus", lambda: _corpus(out / "bench", prof.corpus, workers, progress))
    step(f"2/4 new-speaker corpus: {prof.new_speakers.n_speakers} speakers, seed {prof.new_speakers.seed}")
    new = timed("new-speaker corpus", lambda: _corpus(out / "new-speakers", prof.new_speakers, workers, progress))
    step("3/4 training the recipe: VQ-VAE audio, visual; VQ-MDVAE; VQ-DSAE audio, visual")
    timings.update(train_recipe(corpus, out / "runs", prof, device, step, train_progress))
    step("4/4 evaluating on the test speakers and on the new speakers")
    reports = {"test speakers": timed("eval test speakers", lambda: evaluate(
                   out / "runs", corpus, "test", prof, out / "report-test", device, progress)),
               f"new speakers (seed {prof.new_speakers.seed})": timed("eval new speakers", lambda: evaluate(
                   out / "runs", new, "all", prof, out / "report-new-speakers", device, progress))}
    rows = score(profile, reports)
    summary = {"profile": profile, "recipe": asdict(prof), "targets": rows, "timings_s": timings,
               "headline": {k: headline(r) for k, r in reports.items()}}
    atomic.write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))
    atomic.write_text(out / "summary.md", summary_markdown(profile, rows, timings, summary["headline"]))
    return summary
