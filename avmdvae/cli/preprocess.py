"""`avmdvae preprocess INPUT OUT` and `avmdvae info PATH`.

`info` dispatches on what PATH is: a corpus (has corpus.json) is described here; other kinds of
PATH (training runs...) are handled by functions registered with `info_handler` by other CLI
modules, tried in order; a media file gets its stream information.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from avmdvae.cli.app import command, console, err_console
from avmdvae.errors import AvmdvaeError
from avmdvae.layouts import LAYOUTS, discover

# -------------------------------------------------------------------------------------------- preprocess


class _FramesPerSecond(ProgressColumn):
    """Model frames written per second of wall time (task field 'frames')."""

    def render(self, task: Task) -> Text:
        frames = task.fields.get("frames", 0)
        elapsed = task.elapsed or 0.0
        rate = frames / elapsed if elapsed > 0 else 0.0
        return Text(f"{rate:6.1f} frames/s", style="progress.data.speed")


@command("preprocess", help="Turn talking-face videos (a file, a folder, MEAD or RAVDESS) into a corpus.")
def preprocess(
    input: Path = typer.Argument(..., help="A video file, or a folder of videos (MEAD, RAVDESS or any)."),
    out: Path = typer.Argument(..., help="Corpus folder to create or resume."),
    layout: str = typer.Option("auto", "--layout", help=f"Input layout: {', '.join(LAYOUTS)}."),
    fps: float = typer.Option(30.0, "--fps", help="Model frame rate (faces and spectrogram rows per s)."),
    workers: int = typer.Option(0, "--workers", help="Worker processes, one clip each (0: one per CPU)."),
    shard: str = typer.Option("1/1", "--shard", help="Do part i of n of the sorted clip list (1-based)."),
    detector: str = typer.Option("mtcnn", "--detector",
                                 help="mtcnn, or none for videos that are already face crops."),
    device: str | None = typer.Option(None, "--device",
                                      help="Torch device for face detection: cpu, cuda, mps or auto (default: cpu)."),
    labels: Path | None = typer.Option(None, "--labels",
                                       help="CSV of labels for --layout folder (default: INPUT/labels.csv)."),
    retry_skipped: bool = typer.Option(False, "--retry-skipped",
                                       help="Retry clips an earlier run skipped for a permanent reason."),
) -> None:
    from avmdvae import preprocess as pp
    from avmdvae.corpus import PreprocessParams
    from avmdvae.outputs import check_outputs
    from avmdvae.training.distributed import pick_device

    params = PreprocessParams(fps=fps, detector=detector)
    pp.check_params(params)
    shard_t = pp.parse_shard(shard)
    if workers < 0:
        raise AvmdvaeError(f"--workers must be >= 0 (0: one per CPU), got {workers}")
    if device is not None:
        device = str(pick_device(device))
    check_outputs({}, inputs=[input], folders={"OUT": out})
    d = discover(input, layout, labels=labels)
    for note in d.notes:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False)
    for warning in d.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False)

    if d.layout == "file":
        src = d.clips[0]
        with _stop_cleanly(out), console.status(f"preprocessing {src.video.name}"):
            r = pp.preprocess_file(src, out, params, device=device)
        for warning in r.warnings:
            err_console.print(f"[yellow]warning:[/] {src.clip_id}: {warning}; training skips it", highlight=False)
        if r.reason == "already in the corpus":
            console.print(f"{src.clip_id}: already in {out}; nothing to do")
        else:
            console.print(f"[green]done[/]: {src.clip_id} ({r.n_frames} frames, {r.seconds:.1f} s) -> {out}",
                          highlight=False)
        return

    console.print(f"{d.layout} layout: {len(d.clips)} clips, {len(d.skipped)} unusable files in {input}; "
                  f"splits {d.split_rule}", highlight=False)
    progress = Progress(TextColumn("[bold]preprocess"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("clips"), _FramesPerSecond(), TimeElapsedColumn(), TextColumn("ETA"),
                        TimeRemainingColumn(),
                        console=console, transient=False)
    task = progress.add_task("preprocess", total=None, frames=0)
    state = {"frames": 0}

    def on_plan(n: int) -> None:
        progress.update(task, total=n)
        progress.reset(task, total=n, frames=0)

    def on_result(r: pp.ClipResult) -> None:
        state["frames"] += r.n_frames
        progress.update(task, advance=1, frames=state["frames"])

    with _stop_cleanly(out), progress:
        report = pp.run_batch(d, out, params, workers=workers, shard=shard_t, device=device,
                              retry_skipped=retry_skipped, on_plan=on_plan, on_result=on_result)
    _print_report(report)
    if not report.ok:
        top = report.reasons().most_common(1)
        why = f"; most common reason: {top[0][0]}" if top else ""
        raise AvmdvaeError(f"no clip could be preprocessed ({len(report.skipped)} skipped{why})")


@contextlib.contextmanager
def _stop_cleanly(out: Path) -> Iterator[None]:
    """Ctrl-C or SIGTERM in the block: say what is complete and how to resume, exit 130 / 143."""
    from avmdvae import preprocess as pp
    from avmdvae.corpus import Corpus

    try:
        with pp.sigterm_as_interrupt():
            yield
    except KeyboardInterrupt as e:
        try:
            n = len(Corpus.open(out).clips)
        except AvmdvaeError:
            n = 0
        how = "terminated (SIGTERM)" if isinstance(e, pp.Terminated) else "interrupted"
        err_console.print(f"[yellow]{how}[/]: {n} clip(s) complete in {out}; clips in progress were "
                          "discarded; re-run the same command to resume", highlight=False)
        raise typer.Exit(143 if isinstance(e, pp.Terminated) else 130) from None


def _print_report(report) -> None:  # report: avmdvae.preprocess.BatchReport
    i, n = report.shard
    title = f"preprocess -> {report.out}" + (f" (shard {i}/{n})" if n > 1 else "")
    t = Table(title=title, title_justify="left")
    t.add_column("outcome")
    t.add_column("clips", justify="right")
    t.add_column("details")
    rate = report.frames / report.seconds if report.seconds > 0 else 0.0
    t.add_row("[green]done now", str(report.done), f"{report.frames} frames in {report.seconds:.1f} s "
              f"({rate:.1f} frames/s)")
    t.add_row("done before", str(report.already_done), "finished by an earlier run")
    if report.redone:
        t.add_row("[yellow]redone", str(report.redone), "marked finished, but arrays were missing or unreadable")
    for reason, count in report.reasons().most_common():
        t.add_row("[yellow]skipped", str(count), Text(reason))
    console.print(t)
    failed = [r for r in report.results if r.status == "failed"]
    if failed:
        console.print(f"[yellow]{len(failed)} clip(s) failed for reasons that may be transient; "
                      "re-run the same command to retry them.")


# -------------------------------------------------------------------------------------------- info

InfoHandler = Callable[[Path], bool]
INFO_HANDLERS: list[InfoHandler] = []


def info_handler(fn: InfoHandler) -> InfoHandler:
    """Register fn(path) -> bool for `avmdvae info`: describe `path` and return True if it is yours."""
    INFO_HANDLERS.append(fn)
    return fn


@command("info", help="Describe a corpus (or another avmdvae output, or a media file).")
def info(path: Path = typer.Argument(..., help="A corpus folder, a training run, or a media file.")) -> None:
    from avmdvae.corpus import is_corpus

    if not path.exists():
        raise AvmdvaeError(f"{path} does not exist; check the path")
    if is_corpus(path):
        show_corpus(path)
        return
    for handler in INFO_HANDLERS:
        if handler(path):
            return
    if path.is_file():
        show_media(path)
        return
    raise AvmdvaeError(f"{path} is not an avmdvae corpus (no corpus.json) or anything else `info` knows; "
                       "give a corpus folder made by `avmdvae preprocess`")


def show_media(path: Path) -> None:
    from avmdvae import media

    m = media.probe(path)
    t = Table(title=f"media {path}", title_justify="left", show_header=False)
    t.add_row("duration", f"{m.duration:.3f} s")
    if m.has_video:
        t.add_row("video", f"{m.video_codec} {m.width}x{m.height} {m.fps:.3f} fps, {m.n_frames} frames")
    else:
        t.add_row("video", "[yellow]none")
    if m.has_audio:
        t.add_row("audio", f"{m.audio_codec} {m.audio_rate} Hz, {m.audio_channels} channel(s)")
    else:
        t.add_row("audio", "[yellow]none")
    console.print(t)


def show_corpus(path: Path) -> None:
    from avmdvae.corpus import SPLITS, Corpus

    c = Corpus.open(path)
    p = c.params
    console.print(f"[bold]corpus[/] {c.root}  (format version {c.meta.get('format_version')}, "
                  f"{c.meta.get('created_by', 'avmdvae')})", highlight=False)
    console.print("params: " + ", ".join(f"{k}={v}" for k, v in p.to_dict().items()), highlight=False)

    t = Table(title="splits", title_justify="left")
    for col in ("split", "clips", "speakers", "frames", "hours"):
        t.add_column(col, justify="left" if col == "split" else "right")
    for s in (*SPLITS, None):
        clips = c.clips if s is None else c.split(s)
        frames = sum(r.n_frames for r in clips)
        t.add_row(s or "[bold]total", str(len(clips)), str(len({r.speaker for r in clips})), str(frames),
                  f"{frames / p.fps / 3600:.3f}")
    console.print(t)

    if c.clips:
        spk = Table(title="speakers", title_justify="left")
        spk.add_column("split")
        spk.add_column("speakers (clips)")
        for s in SPLITS:
            counts = Counter(r.speaker for r in c.split(s))
            spk.add_row(s, Text(", ".join(f"{k} ({v})" for k, v in sorted(counts.items())) or "-"))
        console.print(spk)

        emo = Table(title="emotions", title_justify="left")
        emo.add_column("emotion")
        for s in SPLITS:
            emo.add_column(s, justify="right")
        by = Counter((r.emotion or "(none)", r.split) for r in c.clips)
        for e in sorted({k[0] for k in by}):
            emo.add_row(e, *(str(by[(e, s)]) for s in SPLITS))
        console.print(emo)

    skipped = c.skipped()
    if skipped:
        sk = Table(title=f"skipped clips ({len(skipped)})", title_justify="left")
        sk.add_column("clips", justify="right")
        sk.add_column("reason")
        sk.add_column("examples")
        from avmdvae.preprocess import reason_kind

        groups: dict[str, list[str]] = {}
        for rec in skipped:
            kind = reason_kind(str(rec.get("reason", "")))
            if not rec.get("permanent", True):
                kind += " [retried on re-run]"
            groups.setdefault(kind, []).append(str(rec.get("clip_id")))
        for reason, ids in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            ex = ", ".join(ids[:3]) + (f", ... (+{len(ids) - 3})" if len(ids) > 3 else "")
            sk.add_row(str(len(ids)), Text(reason), Text(ex))
        console.print(sk)
    else:
        console.print("skipped clips: none")
