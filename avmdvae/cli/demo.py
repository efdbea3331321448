"""`avmdvae demo [OUT]`: the built-in demo (avmdvae.demo)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from avmdvae.cli.app import command, console, progress_bars
from avmdvae.outputs import check_outputs


@command("demo")
def demo(
    out: Path = typer.Argument(Path("demo_out"), help="Folder for everything the demo writes."),
    train: bool = typer.Option(False, "--train", help="Train the demo models from scratch (about 10 min on "
                               "2 CPU cores) instead of loading the checkpoints shipped in models/demo/."),
    models: Path | None = typer.Option(None, "--models", help="Folder with vqvae-audio/, vqvae-visual/, "
                                       "mdvae/ runs (default: the shipped models/demo/)."),
    workers: int = typer.Option(0, "--workers", min=0,
                                help="Processes for synthesis and preprocessing (0: one per CPU)."),
    small: bool = typer.Option(False, "--small", help="Fewer clips and swap pairs (a quick check, e.g. in tests)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Generate talking faces, resynthesise them and swap factors between two speakers, with a report."""
    from avmdvae.demo import SHIPPED, DemoOptions, run_demo

    check_outputs({}, inputs=[models], folders={"OUT": out})
    opts = DemoOptions(out=out, train=train, models=models or SHIPPED, workers=workers)
    if small:
        opts.corpus.update(n_sentences=1, emotions=("neutral", "happy", "sad"))
        opts.eval_clips, opts.swap_pairs, opts.gl_iters = 18, 3, 16
    t0 = time.perf_counter()
    with progress_bars(quiet) as progress:
        result = run_demo(opts, step=lambda text: console.print(f"[bold]{text}[/]", highlight=False),
                          progress=progress)
    console.print(f"[green]demo done[/] in {time.perf_counter() - t0:.0f} s: outputs in {result.out}/",
                  highlight=False)
    for name, path in result.files.items():
        console.print(f"  {name:<22} {path}", highlight=False)
    swap = result.scores.get("swap_score") or {}
    if swap:
        console.print("  swap score per latent: " + ", ".join(f"{k} {v:.2f}" for k, v in swap.items()
                                                            if v is not None), highlight=False)
