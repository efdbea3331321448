"""`avmdvae resynth | swap | interpolate | denoise`: thin layers over avmdvae.manipulation.ops.

Each command checks its options, its outputs (ops.check_paths) and the device before it loads the
model, so that a mistake costs no waiting.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from avmdvae.cli.app import command, console, progress_bars

MODEL_HELP = "MDVAE run directory (avmdvae train mdvae -o RUN); its stage-1 runs are found from it."
PHASE_HELP = "Audio phase: griffin-lim (fast Griffin-Lim on the decoded spectrogram) or source (the input's)."
FACTOR_HELP = (
    "Latent factor to take from B: w (static: speaker, emotion), zav (shared dynamics: articulation), "
    "za (audio-only dynamics), zv (visual-only dynamics). Repeatable."
)
LENGTH_HELP = (
    "When B's length differs from A's: stretch (B's dynamics resampled to A's length) or loop "
    "(B's own speed, truncated or played back and forth)."
)

ModelOpt = typer.Option(..., "--model", "-m", help=MODEL_HELP)
OutOpt = typer.Option(..., "-o", "--output", help="Output video (.mp4).")
PhaseOpt = typer.Option("griffin-lim", "--phase", help=PHASE_HELP)
NativeOpt = typer.Option(False, "--native-size", help="Write the 64x64 faces as is (default: upscaled to 256).")
SideOpt = typer.Option(False, "--side-by-side", help="Show the input face crop next to the result.")
SheetOpt = typer.Option(
    None, "--sheet", help="Also write a sheet of frames and spectrograms (PNG or JPEG, after the suffix)."
)
DeviceOpt = typer.Option("cpu", "--device", help="Torch device: cpu, cuda, mps or auto.")
ItersOpt = typer.Option(64, "--gl-iters", min=1, help="Griffin-Lim iterations.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress display.")
ThreadsOpt = typer.Option(
    None,
    "--threads",
    min=1,
    help="Torch CPU threads (default: torch's). 1 is faster on a busy machine (docs/benchmarks.md).",
)


def _opts(phase: str, native: bool, side: bool, sheet: Path | None, gl_iters: int, seed: int = 0):  # noqa: ANN202
    from avmdvae.manipulation.ops import OutputOptions

    return OutputOptions(native_size=native, side_by_side=side, phase=phase, gl_iters=gl_iters, sheet=sheet, seed=seed)


def _load(model: Path, device: str, threads: int | None = None):  # noqa: ANN202
    """The device (an absent one is a one-line error), then the model on it."""
    import torch

    from avmdvae.manipulation.model import AVModel
    from avmdvae.training.distributed import pick_device

    dev = pick_device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    return AVModel.load(model, device=dev)


def _done(res) -> None:  # noqa: ANN001
    extra = "".join(f", {p}" for p in res.extra_outputs)
    console.print(
        f"[green]wrote[/] {res.output} ({res.n_frames} frames, {res.seconds:.2f} s){extra}",
        highlight=False,
        soft_wrap=True,
    )


@command("resynth", help="Analysis-resynthesis: encode a video with the model and decode it back to media.")
def resynth(
    video: Path = typer.Argument(..., help="Input video with a face and sound."),
    model: Path = ModelOpt,
    output: Path = OutOpt,
    phase: str = PhaseOpt,
    native_size: bool = NativeOpt,
    side_by_side: bool = SideOpt,
    sheet: Path | None = SheetOpt,
    device: str = DeviceOpt,
    gl_iters: int = ItersOpt,
    quiet: bool = QuietOpt,
    threads: int | None = ThreadsOpt,
) -> None:
    from avmdvae.manipulation import ops

    opts = _opts(phase, native_size, side_by_side, sheet, gl_iters)
    ops.check_paths(output, [video, model], opts)
    m = _load(model, device, threads)
    with progress_bars(quiet) as p:
        res = ops.resynth(m, video, output, opts, p)
    _done(res)


@command("swap", help="A's video with the named latent factors taken from B.")
def swap(
    video_a: Path = typer.Argument(..., help="Video A (keeps its other factors and its length)."),
    video_b: Path = typer.Argument(..., help="Video B (gives the named factors)."),
    factor: list[str] = typer.Option(..., "--factor", "-f", help=FACTOR_HELP),
    model: Path = ModelOpt,
    output: Path = OutOpt,
    length: str = typer.Option("stretch", "--length", help=LENGTH_HELP),
    phase: str = PhaseOpt,
    native_size: bool = NativeOpt,
    side_by_side: bool = SideOpt,
    sheet: Path | None = SheetOpt,
    device: str = DeviceOpt,
    gl_iters: int = ItersOpt,
    quiet: bool = QuietOpt,
    threads: int | None = ThreadsOpt,
) -> None:
    from avmdvae.manipulation import ops
    from avmdvae.manipulation.swap import check_factors

    factors = check_factors(factor, length)
    opts = _opts(phase, native_size, side_by_side, sheet, gl_iters)
    ops.check_paths(output, [video_a, video_b, model], opts)
    m = _load(model, device, threads)
    with progress_bars(quiet) as p:
        res = ops.swap(m, video_a, video_b, factors, output, opts, length, p)
    _done(res)


@command(
    "interpolate",
    help="Go from A to B in the named factors: a video (A at the start, B at the end) "
    "and a grid image with one row per step.",
)
def interpolate(
    video_a: Path = typer.Argument(..., help="Video A (gives the timeline and the other factors)."),
    video_b: Path = typer.Argument(..., help="Video B."),
    factor: list[str] = typer.Option(["w"], "--factor", "-f", help=FACTOR_HELP),
    steps: int = typer.Option(5, "--steps", "-k", min=2, help="Rows of the grid (A, K-2 intermediate steps, B)."),
    model: Path = ModelOpt,
    output: Path = OutOpt,
    grid: Path | None = typer.Option(
        None, "--grid", help="Grid image, PNG or JPEG after the suffix (default: the output name with .png)."
    ),
    length: str = typer.Option("stretch", "--length", help=LENGTH_HELP),
    phase: str = PhaseOpt,
    native_size: bool = NativeOpt,
    side_by_side: bool = SideOpt,
    sheet: Path | None = SheetOpt,
    device: str = DeviceOpt,
    gl_iters: int = ItersOpt,
    quiet: bool = QuietOpt,
    threads: int | None = ThreadsOpt,
) -> None:
    from avmdvae.manipulation import ops
    from avmdvae.manipulation.swap import check_factors

    factors = check_factors(factor, length)
    opts = _opts(phase, native_size, side_by_side, sheet, gl_iters)
    ops.check_paths(output, [video_a, video_b, model], opts, grid=ops.grid_path(output, grid))
    m = _load(model, device, threads)
    with progress_bars(quiet) as p:
        res = ops.interpolate(m, video_a, video_b, factors, steps, output, grid, opts, length, p)
    _done(res)


@command("denoise", help="Reconstruct a noisy or missing modality with the help of the other.")
def denoise(
    video: Path = typer.Argument(..., help="Input video (clean when --add-noise is given)."),
    model: Path = ModelOpt,
    output: Path = OutOpt,
    add_noise: str | None = typer.Option(
        None,
        "--add-noise",
        help="Corrupt the clean input first and report before/after metrics: "
        "audio:white:SNR_DB, audio:babble:SNR_DB, visual:gaussian:SIGMA (0..1), visual:occlude:mouth|eyes.",
    ),
    drop: str | None = typer.Option(
        None,
        "--drop",
        help="Infer the factors without this modality (audio or visual) and reconstruct it from the other.",
    ),
    impute_iters: int = typer.Option(
        0,
        "--impute-iters",
        min=0,
        help="With --drop: re-encode this many times with the dropped features replaced by their reconstruction.",
    ),
    metrics: Path | None = typer.Option(None, "--metrics", help="Write the metrics as JSON."),
    seed: int = typer.Option(0, "--seed", help="Seed of the added noise and of Griffin-Lim."),
    phase: str = PhaseOpt,
    native_size: bool = NativeOpt,
    side_by_side: bool = SideOpt,
    sheet: Path | None = SheetOpt,
    device: str = DeviceOpt,
    gl_iters: int = ItersOpt,
    quiet: bool = QuietOpt,
    threads: int | None = ThreadsOpt,
) -> None:
    from avmdvae.manipulation import ops
    from avmdvae.manipulation.noise import parse_noise

    if add_noise:
        parse_noise(add_noise)  # fail before loading anything
    opts = _opts(phase, native_size, side_by_side, sheet, gl_iters, seed)
    ops.check_paths(output, [video, model], opts, metrics=metrics)
    m = _load(model, device, threads)
    with progress_bars(quiet) as p:
        res = ops.denoise(m, video, output, add_noise, drop, opts, metrics, impute_iters, p)
    _done(res)
    _print_metrics(res.metrics)


def _print_metrics(metrics: dict) -> None:
    rows = [(mod, name) for mod, entry in metrics.items() if isinstance(entry, dict) for name in entry.get("after", {})]
    if not rows:
        return
    table = Table(title="vs the clean input", title_justify="left")
    for col in ("modality", "metric", "before", "after"):
        table.add_column(col, justify="right" if col in ("before", "after") else "left")
    for mod, name in rows:
        entry = metrics[mod]
        before = entry.get("before", {}).get(name)
        table.add_row(mod, name, "-" if before is None else f"{before:.3f}", f"{entry['after'][name]:.3f}")
    console.print(table)
