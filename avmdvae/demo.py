"""The built-in demo: from nothing to swapped talking faces in a few minutes on a CPU.

    synthetic corpus (synth) -> face crops + spectrograms (preprocess) -> demo models (shipped in
    models/demo/, or trained with `--train`) -> resynthesis, w-swap and z(av)-swap as mp4 with audio,
    an overview sheet (PNG) and a report with reconstruction and swap scores (evaluation).

Everything it writes lands in OUT (default `demo_out/`); re-running resumes the corpus steps.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avmdvae import atomic
from avmdvae.constants import Progress, no_progress
from avmdvae.errors import ConfigError

REPO_MODELS = Path(__file__).resolve().parent.parent / "models"
SHIPPED = REPO_MODELS / "demo"  # vqvae-audio/, vqvae-visual/, mdvae/ (best.pt each)
RUNS = ("vqvae-audio", "vqvae-visual", "mdvae")
SEED = 0  # the shipped models were trained on the synthetic corpus of this seed (`--train` uses it too)
DEMO_SEED = 1  # the demo's own clips: speakers of another seed, whom no shipped or demo-trained model saw

# The training corpus of the shipped models (models/README.md): 6 speakers -> 4 train, 1 validation,
# 1 test (speaker-disjoint); 4 emotions, 3 sentences: 6 x (1 + 3 x 3) x 3 = 180 clips of 3-4 s.
TRAIN_CORPUS = {"n_speakers": 6, "n_sentences": 3, "emotions": ("neutral", "happy", "sad", "angry"),
                "levels": (1, 2, 3)}
# What the demo itself generates and evaluates on: the same speakers and emotions at the strongest
# intensity, 2 sentences: 6 x (1 + 3) x 2 = 48 clips (about half a minute to make and preprocess).
DEMO_CORPUS = {"n_speakers": 6, "n_sentences": 2, "emotions": ("neutral", "happy", "sad", "angry"),
               "levels": (3,)}

Step = Callable[[str], None]



@dataclass
class DemoOptions:
    out: Path = Path("demo_out")
    train: bool = False  # train the demo models from scratch instead of loading models/demo/
    models: Path = SHIPPED
    corpus: dict[str, Any] = field(default_factory=lambda: dict(DEMO_CORPUS))
    workers: int = 0  # 0 = one per CPU
    eval_clips: int = 48  # clips used by the swap test (disentangle) in the report
    swap_pairs: int = 8
    # noise draws averaged into the audio counterfactual: 4 leave it 1.7 dB from the noise-free spectrum
    # (3.4 / sqrt(4)), enough for a first look at a quarter of `avmdvae eval`'s cost (16)
    swap_noise_draws: int = 4
    gl_iters: int = 32
    train_overrides: list[str] = field(default_factory=list)  # --set style, applied to every training run


@dataclass
class DemoResult:
    out: Path
    files: dict[str, Path]
    scores: dict[str, Any]


def _synth(root: Path, spec: dict[str, Any], workers: int, progress: Progress, seed: int = SEED) -> Path:
    from avmdvae.preprocess import available_cpus
    from avmdvae.synth.generate import generate_corpus

    generate_corpus(root, seed=seed, workers=workers or available_cpus(),
                    progress=lambda done, total: progress("synth", done, total), **spec)
    return root


def _preprocess(src: Path, dst: Path, workers: int, progress: Progress) -> Path:
    from avmdvae.corpus import PreprocessParams
    from avmdvae.layouts import discover
    from avmdvae.preprocess import run_batch

    count = {"total": 0, "done": 0}

    def plan(n: int) -> None:
        count["total"] = n
        progress("preprocess", 0, n)

    def result(_: Any) -> None:
        count["done"] += 1
        progress("preprocess", count["done"], count["total"])

    report = run_batch(discover(src, "mead"), dst, PreprocessParams(), workers=workers, on_plan=plan,
                       on_result=result)
    if not report.ok:
        raise ConfigError(f"preprocessing the demo corpus in {dst} produced no clips: see `avmdvae info {dst}`")
    return dst


def train_demo_models(corpus: Path, runs: Path, overrides: list[str] | None = None,
                      progress: bool = True) -> Path:
    """Train the demo VQ-VAEs and MDVAE on `corpus` into runs/{vqvae-audio,vqvae-visual,mdvae}."""
    from avmdvae.training.config import resolve
    from avmdvae.training.loop import RunOptions, train
    from avmdvae.training.tasks import MDVAETask, VQVAETask

    sets = list(overrides or [])
    for modality in ("audio", "visual"):
        cfg = resolve("vqvae", modality, REPO_MODELS / f"demo-vqvae-{modality}.yaml", sets)
        train(VQVAETask(corpus, modality, cfg), runs / f"vqvae-{modality}", RunOptions(progress=progress))
    cfg = resolve("mdvae", None, REPO_MODELS / "demo-mdvae.yaml", sets)
    task = MDVAETask(corpus, runs / "vqvae-audio", runs / "vqvae-visual", cfg)
    train(task, runs / "mdvae", RunOptions(progress=progress))
    return runs / "mdvae"


def _pick_pair(corpus: Any) -> tuple[Any, Any]:
    """A: a test-split clip (a speaker the model never saw) showing a happy face; B: the same sentence
    said sadly by another speaker, so that a w-swap visibly changes identity and emotion."""
    clips = corpus.clips
    test = corpus.split("test") or clips
    a = next((c for c in test if c.emotion == "happy"), test[0])
    others = [c for c in clips if c.speaker != a.speaker]
    if not others:
        raise ConfigError(f"the demo corpus {corpus.root} has a single speaker: a swap needs two")
    b = next((c for c in others if c.emotion == "sad" and c.sentence == a.sentence), others[0])
    return a, b


def _source_video(clip: Any) -> Path:
    return Path(clip.source)


def run_demo(opts: DemoOptions, step: Step = print, progress: Progress = no_progress) -> DemoResult:
    from avmdvae.corpus import Corpus
    from avmdvae.evaluation import swap as swap_fidelity
    from avmdvae.evaluation.report import write_report
    from avmdvae.evaluation.tasks import EvalOptions, Evaluator
    from avmdvae.manipulation import AVModel, combine
    from avmdvae.manipulation.ops import OutputOptions, write_video
    from avmdvae.manipulation.sheets import SheetRow, write_sheet

    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)

    if opts.train:
        step("1/5 synthesising the training corpus (avmdvae synth)")
        src = _synth(out / "train-synth", dict(TRAIN_CORPUS), opts.workers, progress)
        step("2/5 preprocessing it: face crops + spectrograms (avmdvae preprocess)")
        train_corpus = _preprocess(src, out / "train-corpus", opts.workers, progress)
        step("3/5 training the demo models (avmdvae train vqvae x2, train mdvae)")
        run = train_demo_models(train_corpus, out / "runs", opts.train_overrides)
    else:
        run = Path(opts.models) / "mdvae"
        if not (run / "best.pt").is_file():
            raise ConfigError(f"no demo checkpoint in {opts.models}: run from the repository checkout, "
                              "pass --models DIR, or train them with --train")
        step(f"1-3/5 using the shipped demo models in {opts.models}")

    step("4/5 synthesising and preprocessing the demo clips")
    corpus = Corpus.open(_preprocess(_synth(out / "synth", opts.corpus, opts.workers, progress, DEMO_SEED),
                                     out / "corpus", opts.workers, progress))
    model = AVModel.load(run)
    rec_a, rec_b = _pick_pair(corpus)
    clip_a = model.read(_source_video(rec_a))
    clip_b = model.read(_source_video(rec_b))
    lat_a, lat_b = model.encode(clip_a), model.encode(clip_b)
    view = OutputOptions(side_by_side=True, gl_iters=opts.gl_iters)

    files: dict[str, Path] = {}
    rows = [SheetRow(f"A: {rec_a.speaker} {rec_a.emotion}", clip_a.faces, clip_a.power),
            SheetRow(f"B: {rec_b.speaker} {rec_b.emotion}", clip_b.faces, clip_b.power)]
    outputs = {"resynthesis": [], "swap-w": ["w"], "swap-zav": ["zav"]}
    for name, factors in outputs.items():
        dec = model.decode(combine(lat_a, lat_b, factors) if factors else lat_a)
        wave = model.to_audio(dec.power, n_iter=opts.gl_iters, loudness_from=clip_a.audio)
        files[name] = out / f"{name}.mp4"
        write_video(files[name], dec.faces, wave, model.fps, view, left=clip_a.faces)
        label = "A resynthesised" if not factors else f"A with {factors[0]} from B"
        rows.append(SheetRow(label, dec.faces, dec.power))
    files["overview"] = out / "overview.png"
    write_sheet(files["overview"], rows)

    step("5/5 scoring reconstruction and swaps (avmdvae eval: resynth, disentangle)")
    ev = Evaluator(model, corpus, progress=progress, options=EvalOptions(
        max_clips=opts.eval_clips, max_test_clips=4, swap_pairs=opts.swap_pairs, gl_iters=opts.gl_iters, draws=3,
        split="all", swap_noise_draws=opts.swap_noise_draws))  # every demo speaker is unseen (DEMO_SEED)
    results = ev.run(["resynth", "disentangle"])
    # swap fidelity against the counterfactual; the factor estimators (minutes to fit) are left to `eval`
    results["swap"] = swap_fidelity.run(ev, estimators=None)
    results["demo"] = {"A": rec_a.clip_id, "B": rec_b.clip_id, "model": str(run)}
    for path in write_report(out / "report", results):
        files[f"report/{path.name}"] = path
    scores = summarise(results)
    atomic.write_text(out / "README.md", _readme(files, scores, rec_a, rec_b, run))
    files["readme"] = out / "README.md"
    return DemoResult(out, files, scores)


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of the report: reconstruction per system and the swap score per latent."""
    out: dict[str, Any] = {}
    resynth = results.get("resynth", {})
    for system, metrics in (resynth.get("systems") or {}).items():
        out[f"resynth/{system}"] = {k: v.get("mean") for k, v in metrics.items() if isinstance(v, dict)}
    summary = results.get("disentangle", {}).get("summary") or {}
    if summary:
        out["swap_score"] = {k: v.get("swap_score") for k, v in summary.items()}
    fid = results.get("swap", {}).get("swap_fidelity") or {}
    if fid:
        out["swap_fidelity"] = {k: v.get("mean") for k, v in fid.items()}
    return out


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3g}"


def _readme(files: dict[str, Path], scores: dict[str, Any], a: Any, b: Any, run: Path) -> str:
    lines = ["# avmdvae demo output", "",
             f"Model: `{run}`. A = `{a.clip_id}` ({a.speaker}, {a.emotion}); B = `{b.clip_id}` "
             f"({b.speaker}, {b.emotion}).", "",
             "| file | what |", "|---|---|",
             "| resynthesis.mp4 | input crop of A (left) and its analysis-resynthesis (right) |",
             "| swap-w.mp4 | A with B's w (speaker identity + emotion), A's dynamics |",
             "| swap-zav.mp4 | A with B's z(av) (lips and formants), A's identity, pitch, eyes |",
             "| overview.png | frames and spectrograms of A, B and the three outputs |",
             "| report/report.md | reconstruction and swap scores (full tables and plots) |", ""]
    rec = {k: v for k, v in scores.items() if k.startswith("resynth/")}
    if rec:
        keys = sorted({m for v in rec.values() for m in v})
        lines += ["## Reconstruction (test speakers)", "", "| system | " + " | ".join(keys) + " |",
                  "|---|" + "---|" * len(keys)]
        lines += [f"| {k.split('/', 1)[1]} | " + " | ".join(_fmt(v.get(m)) for m in keys) + " |"
                  for k, v in rec.items()]
        lines.append("")
    if scores.get("swap_fidelity"):
        lines += ["## Swap fidelity per latent (1 = the output is the true \"A with B's latent\" the generator "
                  "renders, 0 = no closer than A's resynthesis)", "", "| latent | fidelity |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in scores["swap_fidelity"].items()]
        lines.append("")
    if scores.get("swap_score"):
        lines += ["## Swap score per latent (1 = the swapped factor moves to B's and nothing else, "
                  "0 = no selective change)", "", "| latent | score |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in scores["swap_score"].items()]
        lines.append("")
    return "\n".join(lines)


def export_runs(runs: Path, dest: Path = SHIPPED, corpus_description: str | None = None) -> list[Path]:
    """Copy trained demo runs into `dest` as inference-only checkpoints (see models/README.md);
    `corpus_description` names their training corpus in the domain check's warnings."""
    from avmdvae.training.checkpoint import slim_copy

    written = []
    hashes: dict[str, str] = {}
    for name in RUNS:
        target = dest / name / "best.pt"
        hashes[name] = slim_copy(runs / name / "best.pt", target, stage1_hashes=hashes,
                                 corpus_description=corpus_description)
        for extra in ("config.yaml",):
            if (runs / name / extra).is_file():
                shutil.copyfile(runs / name / extra, dest / name / extra)
        written.append(target)
    return written
