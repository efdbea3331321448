"""`avmdvae eval RUN CORPUS --tasks resynth,emotion,disentangle,denoise,swap -o REPORT_DIR`.

A thin layer over avmdvae.evaluation: load the MDVAE run (and the VQ-DSAE baselines when given), run
the tasks on the corpus with a progress display, write report.json, report.md and PNG plots.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import typer

from avmdvae.cli.app import command, console, err_console, progress_bars
from avmdvae.errors import ConfigError
from avmdvae.outputs import check_outputs

TASKS_HELP = ("Comma-separated tasks: resynth, emotion, disentangle, denoise, swap (default: all but swap, "
              "whose factor estimators take minutes to fit the first time).")
NOISE_HELP = ("Corruption for the denoise task, MODALITY:KIND:VALUE (repeatable), e.g. audio:white:5, "
              "audio:babble:0, visual:gaussian:0.1, visual:occlude:mouth. Default: a sweep of all kinds.")


def _tasks(text: str) -> list[str]:
    from avmdvae.evaluation.tasks import TASKS

    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in TASKS]
    if bad or not names:
        raise ConfigError(f"--tasks {text!r}: choose from {', '.join(TASKS)} (comma-separated)")
    return names


SPLIT_CHOICES = ("train", "validation", "test", "all")


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(k) for k in text.split(",") if k.strip()}))
    except ValueError:
        raise ConfigError(f"--ks {text!r}: give positive integers, e.g. 1,2,5,10") from None
    if not ks or min(ks) < 1:
        raise ConfigError(f"--ks {text!r}: give positive integers, e.g. 1,2,5,10")
    return ks


@command("eval")
def evaluate(
    run: Path = typer.Argument(..., help="Run directory of `avmdvae train mdvae`."),
    corpus: Path = typer.Argument(..., help="Preprocessed corpus (from `avmdvae preprocess`)."),
    output: Path = typer.Option(..., "-o", "--output", help="Report directory (report.json, .md, PNGs)."),
    tasks: str = typer.Option("resynth,emotion,disentangle,denoise", "--tasks", help=TASKS_HELP),
    dsae_audio: Path | None = typer.Option(None, "--dsae-audio", help="VQ-DSAE-audio baseline run."),
    dsae_visual: Path | None = typer.Option(None, "--dsae-visual", help="VQ-DSAE-visual baseline run."),
    noise: list[str] | None = typer.Option(None, "--noise", help=NOISE_HELP),
    draws: int = typer.Option(10, "--draws", min=1, help="Random draws per learning-curve point."),
    ks: str = typer.Option("1,2,5,10,20,50", "--ks", help="Labelled clips per class on the learning curve."),
    max_clips: int | None = typer.Option(None, "--max-clips", min=2,
                                         help="At most this many clips for emotion / disentangle."),
    max_test_clips: int | None = typer.Option(None, "--max-test-clips", min=1,
                                              help="At most this many test clips for resynth / denoise."),
    swap_pairs: int = typer.Option(16, "--swap-pairs", min=1, help="(A, B) pairs per swapped latent."),
    swap_noise_draws: int = typer.Option(16, "--swap-noise-draws", min=0,
                                         help="Noise draws averaged into the audio counterfactual of the swap "
                                              "task (0: score against the corpus' own draw alone)."),
    gl_iters: int = typer.Option(32, "--gl-iters", min=1, help="Griffin-Lim iterations in resynth."),
    split: str | None = typer.Option(None, "--split",
                                     help="Draw every task's clips from this split (train, validation, test) or "
                                          "from all clips (all). Default: resynth, denoise and swap use the test "
                                          "split; emotion and disentangle every clip."),
    seed: int = typer.Option(0, "--seed",
                             help="Seed of the random draws: the report is deterministic for a given seed."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, mps or auto."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Evaluate a trained model: resynthesis quality, few-label emotion probes, disentanglement, denoising."""
    from avmdvae.evaluation.report import write_report
    from avmdvae.evaluation.tasks import DEFAULT_NOISE, EvalOptions, Evaluator

    names = _tasks(tasks)
    if split is not None and split not in SPLIT_CHOICES:
        raise ConfigError(f"--split {split!r}: choose from {', '.join(SPLIT_CHOICES)}")
    check_outputs({}, inputs=[run, corpus, dsae_audio, dsae_visual], folders={"-o": output})
    if noise:  # validate early: one line for a malformed spec, before any model is loaded
        from avmdvae.manipulation.noise import parse_noise

        for s in noise:
            parse_noise(s)
    opts = EvalOptions(draws=draws, ks=_ks(ks), seed=seed, max_clips=max_clips, max_test_clips=max_test_clips,
                       gl_iters=gl_iters, split=split,
                       noise=tuple(noise) if noise else DEFAULT_NOISE, swap_pairs=swap_pairs,
                       swap_noise_draws=swap_noise_draws)
    t0 = time.time()
    with progress_bars(quiet) as progress:
        ev = Evaluator.load(run, corpus, {"audio": dsae_audio, "visual": dsae_visual}, opts, device, progress)
        results = ev.run(names)
    results["meta"] = {
        "run": str(run), "corpus": str(corpus), "tasks": ",".join(names),
        "baselines": ", ".join(u.name for u in ev.dsae.values()) or "none",
        "device": str(ev.device), "seed": seed, "seconds": round(time.time() - t0, 1),
        "python": platform.python_version(),
    }
    written = write_report(output, results)
    for task, reason in results.get("skipped", {}).items():
        err_console.print(f"[yellow]skipped {task}[/]: {reason}", highlight=False, soft_wrap=True)
    console.print(f"[green]done[/] in {time.time() - t0:.0f} s: {written[1]} and {len(written) - 2} plot(s) "
                  f"in {output}", highlight=False, soft_wrap=True)
