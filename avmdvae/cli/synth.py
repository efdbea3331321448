"""`avmdvae synth`: generate a synthetic audiovisual speech corpus with ground truth (MEAD layout)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from avmdvae.cli.app import command, console
from avmdvae.errors import ConfigError
from avmdvae.outputs import check_outputs
from avmdvae.synth.factors import EMOTIONS, LEVELS


def _parse_list(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError(f"{what} is empty; give a comma-separated list")
    return items


@command("synth")
def synth(
    out: Path = typer.Argument(..., help="Output folder (created; re-run with the same options to resume)."),
    speakers: int = typer.Option(4, "--speakers", help="Number of speakers (M001, W002, M003, ...)."),
    sentences: int = typer.Option(3, "--sentences", help="Number of sentence templates (001, 002, ...)."),
    emotions: str = typer.Option(",".join(EMOTIONS), "--emotions",
                                 help="Comma-separated MEAD emotions (neutral exists at level 1 only)."),
    levels: str = typer.Option(",".join(map(str, LEVELS)), "--levels",
                               help="Comma-separated intensity levels (1-3)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: same seed and options -> same corpus."),
    size: int = typer.Option(192, "--size", help="Frame side in pixels (even, >= 96)."),
    workers: int = typer.Option(2, "--workers", min=1, help="Parallel worker processes."),
) -> None:
    """Generate talking-face videos (H.264 + AAC, 30 fps) whose generative factors are known.

    Writes OUT/<speaker>/video/front/<emotion>/level_<i>/<NNN>.mp4 with a <NNN>.truth.npz sidecar
    each, and OUT/synth.json; read it with `avmdvae preprocess OUT --layout mead`.
    See docs/synthetic-corpus.md for the factors and the ground truth.
    """
    from avmdvae.synth.generate import SynthOptions, check_output, generate_corpus

    emo = _parse_list(emotions, "--emotions")
    try:
        lv = [int(x) for x in _parse_list(levels, "--levels")]
    except ValueError:
        raise ConfigError(f"--levels must be comma-separated integers among {LEVELS}, got {levels!r}") \
            from None
    opts = SynthOptions(speakers, sentences, tuple(emo), tuple(lv), seed, size)  # ConfigError if invalid
    check_outputs({}, folders={"OUT": out})
    check_output(out, opts)  # CorpusError if OUT holds something else
    t0 = time.perf_counter()
    with Progress(TextColumn("[bold]synth[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=False) as progress:
        task = progress.add_task("clips", total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        result = generate_corpus(out, n_speakers=opts.n_speakers, n_sentences=opts.n_sentences,
                                 emotions=opts.emotions, levels=opts.levels, seed=opts.seed, size=opts.size,
                                 workers=workers, progress=update)
    dt = time.perf_counter() - t0
    console.print(f"{len(result.videos)} clips in {result.root} ({result.written} written, {result.skipped} "
                  f"already complete) in {dt:.1f} s", highlight=False)
