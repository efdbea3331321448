"""From input videos to a corpus: the per-clip pipeline and the resumable, shardable batch job.

Per clip (`process_clip`):

    video --media.iter_frames(fps, max_side=work_max_side)--> frames --FaceCropper.crop_clip--> faces
    audio --media.read_audio(16 kHz)--> samples --audio.power_spectrogram(n_frames=N)--> spec

with faces (N, 64, 64, 3) uint8 and spec (N, 513) float32.

The audio is the clip's separate audio file when it has one (MEAD .m4a), else the video's own track.
Frames are decoded downscaled to `work_max_side` (decoder-side reformat: cheaper than full-size RGB
conversion, and a face that fills a quarter of a 1080p frame is still ~3x larger than the 64-pixel
crop). Problems the user can fix (unreadable file, no audio, no face, too short...) raise an
AvmdvaeError with a one-line message. A readable clip can still be unfit for training (`clip_problems`:
shorter than one training window, silent audio): batches skip it, a single file keeps it with warnings.

Batch (`run_batch`): the corpus is locked for the run (`corpus.lock_corpus`; shards of one run share
it). Clips whose clip.json exists and whose arrays check out are skipped (resumption; a killed run
loses at most the clips in progress, and a clip with an array missing is redone), skipped clips are
re-tried only when their reason was not permanent or their source file changed (or with
retry_skipped). `shard=(i, n)` processes clips i-1, i-1+n, ... of the sorted clip list (1-based i), so
n jobs on n machines split a dataset with no coordination. With `workers > 1` clips go to a process
pool; each worker builds its FaceCropper once and dies with the main process (`_die_with`).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avmdvae import audio as audio_mod
from avmdvae import media
from avmdvae.atomic import pid_alive, sweep_stale_temps
from avmdvae.constants import N_FFT, SAMPLE_RATE
from avmdvae.corpus import SKIPPED_DIR, ClipRecord, CorpusWriter, PreprocessParams, is_corpus, lock_corpus
from avmdvae.errors import AvmdvaeError, ConfigError, CorpusError, MediaError
from avmdvae.face import FaceCropper
from avmdvae.layouts import Discovery, SkippedSource, SourceClip, path_id

# Longer side of the frames the face cropper works on. 640 px: a 1080p frame decodes ~40% faster
# when the decoder's scaler downsizes it (dependencies.md: 155 -> 215 frames/s at quarter size), and a
# talking-head face (>= 1/4 of the frame height, i.e. >= 90 px at 640x360) is still larger than the
# 64-pixel crop, so the antialiased resize only ever shrinks.
WORK_MAX_SIDE = 640
INDEX_EVERY_S = 60.0
# Torch threads per preprocessing process. MTCNN is many small ops: on a busy 2-core machine one thread
# spent 18 ms of CPU per 320x180 detection frame and two threads 140-230 ms (they wait on each other).
# Parallelism comes from --workers instead: one clip per process, one torch thread each.
TORCH_THREADS = 1
# Decoded frames queued ahead of the face cropper by the decoding thread (see `prefetch`): enough to
# cover one detection batch (face.CHUNK_FRAMES = 30), ~20 MB at 640x360.
PREFETCH_FRAMES = 32  # rebuild manifest.csv / skipped.jsonl at least this often during a batch
# Training reads windows of T consecutive frames (T = 30 by default, 1 s at 30 fps): a shorter clip
# cannot give a single one. Batch jobs skip such clips; a single file is kept, with a warning.
MIN_WINDOW_FRAMES = 30
# Pool workers check this often that the main process still runs, and exit when it does not.
WATCHDOG_S = 0.5
PR_SET_PDEATHSIG = 1  # Linux prctl(2) option: the signal a process gets when its parent dies


@dataclass
class ClipResult:
    clip_id: str
    status: str  # "done" | "skipped" (permanent reason) | "failed" (will be retried)
    n_frames: int = 0  # model frames written
    reason: str | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)  # kept anyway, but the user should know


@dataclass
class BatchReport:
    out: Path
    layout: str
    split_rule: str
    shard: tuple[int, int]
    total: int  # clips (and discovery skips) in this shard
    results: list[ClipResult] = field(default_factory=list)  # processed in this run
    already_done: int = 0  # finished by an earlier run
    redone: int = 0  # marked finished by an earlier run but with arrays missing or unreadable
    kept_skipped: list[ClipResult] = field(default_factory=list)  # skipped by an earlier run, not retried
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def done(self) -> int:
        return sum(r.status == "done" for r in self.results)

    @property
    def frames(self) -> int:
        return sum(r.n_frames for r in self.results)

    @property
    def skipped(self) -> list[ClipResult]:
        return [r for r in self.results if r.status != "done"] + self.kept_skipped

    @property
    def ok(self) -> bool:
        """Something in this shard is (now or already) in the corpus."""
        return self.done + self.already_done > 0

    def reasons(self) -> Counter[str]:
        return Counter(reason_kind(r.reason or "") for r in self.skipped)


def reason_kind(reason: str) -> str:
    """Group skip reasons: drop the leading '<path>: ' that media errors start with."""
    head, sep, tail = reason.partition(": ")
    if sep and ("/" in head or "\\" in head or "." in head) and " " not in head.strip():
        return tail
    return reason


def parse_shard(text: str) -> tuple[int, int]:
    """'2/4' -> (2, 4): the 2nd of 4 parts (1-based)."""
    try:
        i_s, n_s = text.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise ConfigError(f"--shard {text!r} is not of the form i/n (e.g. 1/4 ... 4/4)") from None
    if n < 1 or not 1 <= i <= n:
        m = max(n, 1)
        raise ConfigError(f"--shard {text}: i must be between 1 and n (1/{m} ... {m}/{m})")
    return i, n


def shard_items(ids: list[str], shard: tuple[int, int]) -> set[str]:
    """The ids of shard (i, n): items i-1, i-1+n, i-1+2n, ... of the sorted list."""
    i, n = shard
    return set(sorted(ids)[i - 1 :: n])


def available_cpus() -> int:
    """CPUs this process may run on (respects affinity / container limits where the OS reports them)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def prefetch(it: Iterator[Any], depth: int = PREFETCH_FRAMES) -> Iterator[Any]:
    """Run iterator `it` in a background thread, `depth` items ahead of the consumer.

    Decoding (PyAV) and detection (torch) both release the GIL, so a clip's decode overlaps with its
    face detection and cropping when a core is free. Exceptions are re-raised in the consumer; if the
    consumer stops early, the thread stops too.
    """
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for x in it:
                if not put(("item", x)):
                    return
            put(("end", None))
        except BaseException as e:  # handed to the consumer
            put(("error", e))
        finally:
            close = getattr(it, "close", None)
            if close is not None and stop.is_set():
                close()

    t = threading.Thread(target=run, name="avmdvae-decode", daemon=True)
    t.start()
    try:
        while True:
            kind, x = q.get()
            if kind == "item":
                yield x
            elif kind == "end":
                return
            else:
                raise x
    finally:
        stop.set()
        t.join()


def check_params(params: PreprocessParams) -> None:
    if params.sample_rate != SAMPLE_RATE or params.n_fft != N_FFT:
        raise ConfigError(f"this avmdvae computes spectrograms at {SAMPLE_RATE} Hz with n_fft="
                          f"{N_FFT}; sample_rate={params.sample_rate}, n_fft={params.n_fft} "
                          "are not supported")
    if params.fps <= 0:
        raise ConfigError(f"--fps must be > 0, got {params.fps}")
    if params.detector not in ("mtcnn", "none"):
        raise ConfigError(f"unknown detector {params.detector!r}; use mtcnn or none")


def make_cropper(params: PreprocessParams, device: str | None = None) -> FaceCropper:
    return FaceCropper(detector=params.detector, device=device, size=params.face_size)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ one clip


def process_clip(src: SourceClip, params: PreprocessParams, cropper: FaceCropper,
                 work_max_side: int | None = WORK_MAX_SIDE) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Faces (N, S, S, 3) uint8, power spectrogram (N, 513) float32, and facts about the input.

    Raises MediaError / NoFaceError (AvmdvaeError) for anything wrong with the input.
    """
    info = media.probe(src.video)
    if not info.has_video:
        raise MediaError(f"{src.video}: no video stream; give a video file, not an audio-only one")
    audio_path = src.audio or src.video
    if src.audio is None:
        if not info.has_audio:
            raise MediaError(f"{src.video}: no audio track; give a video with sound")
    elif not media.probe(src.audio).has_audio:
        raise MediaError(f"{src.audio}: no audio stream in the clip's audio file; re-export it")
    video_s = info.n_frames / info.fps if info.fps > 0 and info.n_frames > 0 else info.duration
    if 0 < video_s < (1.0 - 1e-3) / params.fps:
        raise MediaError(f"{src.video}: clip is shorter than one model frame ({video_s * 1000:.0f} ms < "
                         f"{1000 / params.fps:.1f} ms at {params.fps:g} fps); nothing to learn from it")
    frames = prefetch(media.iter_frames(src.video, fps=params.fps, max_side=work_max_side))
    faces = cropper.crop_clip(frames, fps=params.fps, source=str(src.video))
    if len(faces) == 0:
        raise MediaError(f"{src.video}: no video frames; the file is empty or truncated")
    samples = media.read_audio(audio_path, sample_rate=params.sample_rate)
    spec = audio_mod.power_spectrogram(torch.from_numpy(samples), fps=params.fps, n_frames=len(faces))
    facts = {"input_width": info.width, "input_height": info.height, "input_fps": round(info.fps, 3),
             "input_frames": info.n_frames, "audio_seconds": round(len(samples) / params.sample_rate, 3),
             "warnings": clip_problems(len(faces), samples, params)}
    return faces, spec.numpy().astype(np.float32, copy=False), facts


def clip_problems(n_frames: int, samples: np.ndarray, params: PreprocessParams) -> list[str]:
    """What makes a readable clip useless for training: too short for one window, silent audio."""
    out = []
    if n_frames < MIN_WINDOW_FRAMES:
        out.append(f"clip is shorter than one training window ({n_frames} frames = {n_frames / params.fps:.2f} s "
                   f"< {MIN_WINDOW_FRAMES} frames at {params.fps:g} fps)")
    if audio_mod.is_silent(samples):  # batch jobs skip it; a single file is kept, with a warning
        out.append("audio track is silent (peak below -80 dBFS): nothing to learn from its sound")
    return out


def _stamp(path: Path) -> dict[str, Any]:
    try:
        st = path.stat()
        return {"source_size": st.st_size, "source_mtime": st.st_mtime}
    except OSError:
        return {}


def process_and_write(src: SourceClip, writer: CorpusWriter, cropper: FaceCropper,
                      work_max_side: int | None = WORK_MAX_SIDE) -> ClipResult:
    """Process one clip into the corpus; input problems become skip records instead of exceptions."""
    t0 = time.perf_counter()
    writer.clean_partial(src.clip_id)
    try:
        faces, spec, facts = process_clip(src, writer.params, cropper, work_max_side)
    except AvmdvaeError as e:
        reason = str(e)
        writer.write_skipped(src.clip_id, str(src.video), reason, permanent=True, **_stamp(src.video))
        return ClipResult(src.clip_id, "skipped", reason=reason, seconds=time.perf_counter() - t0)
    except Exception as e:  # a bug or a transient failure: record it, retry next run
        reason = (f"unexpected error ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                  "re-run to retry, and report it if it persists")
        writer.write_skipped(src.clip_id, str(src.video), reason, permanent=False, **_stamp(src.video))
        return ClipResult(src.clip_id, "failed", reason=reason, seconds=time.perf_counter() - t0)
    problems = facts.pop("warnings")
    if problems:  # readable but unusable for training: skip it, saying why
        reason = f"{src.video}: {'; '.join(problems)}"
        writer.write_skipped(src.clip_id, str(src.video), reason, permanent=True, **_stamp(src.video))
        return ClipResult(src.clip_id, "skipped", reason=reason, seconds=time.perf_counter() - t0)
    record = ClipRecord(src.clip_id, str(src.video), src.speaker, src.emotion, src.intensity, src.sentence,
                        len(faces), src.split)
    extra = {"audio_source": str(src.audio or src.video), "work_max_side": work_max_side, **facts}
    try:
        writer.write_clip(record, faces, spec, truth=src.truth, extra=extra)
    except OSError as e:
        raise CorpusError(f"cannot write clip {src.clip_id} into {writer.root} ({e.strerror or e}); "
                          "check free space and permissions, then re-run to resume") from None
    return ClipResult(src.clip_id, "done", n_frames=len(faces), seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------ workers

_WORKER: dict[str, Any] = {}


def _die_with(main_pid: int) -> None:
    """Make this pool worker end when the main process `main_pid` ends, even by SIGKILL.

    A worker is the child of multiprocessing's fork server (or of the main process with spawn); the
    server exits when the main process does. On Linux the kernel kills the worker when its parent dies
    (prctl PR_SET_PDEATHSIG); everywhere, a watchdog thread exits when the parent changes or the main
    process is gone. Otherwise a killed run would leave its workers (~1 GB each) behind for good.
    """
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    def watch() -> None:
        while os.getppid() == parent and pid_alive(main_pid):
            time.sleep(WATCHDOG_S)
        os._exit(1)

    threading.Thread(target=watch, name="avmdvae-watchdog", daemon=True).start()


def _init_worker(root: str, params: PreprocessParams, device: str | None, main_pid: int) -> None:
    _die_with(main_pid)
    torch.set_num_threads(TORCH_THREADS)
    _WORKER["writer"] = CorpusWriter(root, params)
    _WORKER["cropper"] = make_cropper(params, device)


def _worker_run(src: SourceClip, work_max_side: int | None) -> ClipResult:
    return process_and_write(src, _WORKER["writer"], _WORKER["cropper"], work_max_side)


# ------------------------------------------------------------------------------------------ signals


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that a run stops as cleanly as on Ctrl-C."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` (a KeyboardInterrupt) in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -------------------------------------------------------------------------------------------- batch


def _needs_work(src: SourceClip, writer: CorpusWriter, retry_skipped: bool) -> tuple[bool, ClipResult | None]:
    """(process it?, the earlier skip result when it stays skipped)."""
    rec = writer.skip_record(src.clip_id)
    if rec is None or retry_skipped or not rec.get("permanent", False):
        return True, None
    stamp = _stamp(src.video)
    if stamp and (stamp.get("source_size") != rec.get("source_size")
                  or stamp.get("source_mtime") != rec.get("source_mtime")):
        return True, None  # the file changed since it was skipped
    return False, ClipResult(src.clip_id, "skipped", reason=str(rec.get("reason", "")))


def _other_file(recorded: str, video: Path) -> bool:
    """True when `recorded` (a finished clip's source) is an existing file other than `video`. A
    recorded source that no longer exists is taken to be `video` moved (resuming after a move works)."""
    try:
        return not os.path.samefile(recorded, video)
    except OSError:
        return False


def claim_ids(clips: list[SourceClip], writer: CorpusWriter) -> None:
    """Give a clip whose id a finished clip from ANOTHER file already holds (same stem in two folders,
    two inputs in one corpus) its own id, in place: the id plus a hash of its path. The choice depends
    only on the corpus and the file, so every re-run maps a file to the same clip."""
    taken = writer.sources()
    for c in clips:
        if c.clip_id in taken and _other_file(taken[c.clip_id], c.video):
            own = path_id(c.clip_id, c.video)
            if own in taken and _other_file(taken[own], c.video):
                raise CorpusError(f"clip id {c.clip_id} of {c.video} is taken by {taken[c.clip_id]} and "
                                  f"{own} by {taken[own]}; rename {c.video}")
            c.clip_id = own


ProgressFn = Callable[[ClipResult], None]


def run_batch(discovery: Discovery, out: str | os.PathLike[str], params: PreprocessParams,
              workers: int = 0, shard: tuple[int, int] = (1, 1), device: str | None = None,
              retry_skipped: bool = False, work_max_side: int | None = WORK_MAX_SIDE,
              on_plan: Callable[[int], None] | None = None,
              on_result: ProgressFn | None = None) -> BatchReport:
    """Preprocess the clips of `discovery` in shard `shard` into the corpus at `out`.

    workers: processes (0: one per available CPU, at most one per clip; 1: in this process).
    on_plan(n_to_process) is called once before work starts; on_result(result)
    after each clip. The corpus is locked for the run (CorpusError if another run holds it).
    KeyboardInterrupt stops the run (the index is rebuilt first) and propagates.
    """
    check_params(params)
    writer = CorpusWriter(out, params)
    with lock_corpus(writer.root, shard):
        for folder in (writer.root, writer.root / SKIPPED_DIR):  # what killed runs left behind
            sweep_stale_temps(folder)
        return _run_locked(discovery, writer, workers, shard, device, retry_skipped, work_max_side,
                           on_plan, on_result)


def _run_locked(discovery: Discovery, writer: CorpusWriter, workers: int, shard: tuple[int, int],
                device: str | None, retry_skipped: bool, work_max_side: int | None,
                on_plan: Callable[[int], None] | None, on_result: ProgressFn | None) -> BatchReport:
    t_start = time.perf_counter()
    params = writer.params
    all_ids = [c.clip_id for c in discovery.clips] + [s.clip_id for s in discovery.skipped]
    mine = shard_items(all_ids, shard)
    clips = [c for c in discovery.clips if c.clip_id in mine]
    claim_ids(clips, writer)
    pre_skipped: list[SkippedSource] = [s for s in discovery.skipped if s.clip_id in mine]
    report = BatchReport(writer.root, discovery.layout, discovery.split_rule, shard, len(mine))

    for s in pre_skipped:  # found unusable at discovery (e.g. RAVDESS video-only)
        if not writer.is_done(s.clip_id):
            writer.write_skipped(s.clip_id, str(s.source), s.reason, permanent=True, **_stamp(s.source))
            report.kept_skipped.append(ClipResult(s.clip_id, "skipped", reason=s.reason))
    todo: list[SourceClip] = []
    for c in clips:
        if writer.is_done(c.clip_id):
            if writer.clip_problem(c.clip_id) is None:
                report.already_done += 1
                continue
            report.redone += 1  # marked complete, but an array is missing or unreadable: redo it
            todo.append(c)
            continue
        go, kept = _needs_work(c, writer, retry_skipped)
        if go:
            todo.append(c)
        elif kept is not None:
            report.kept_skipped.append(kept)
    if on_plan is not None:
        on_plan(len(todo))

    def record(r: ClipResult) -> None:
        report.results.append(r)
        if on_result is not None:
            on_result(r)

    n_workers = min(workers or available_cpus(), len(todo))
    last_index = time.monotonic()
    try:
        if n_workers <= 1:
            cropper = make_cropper(params, device)
            with torch_threads(TORCH_THREADS):
                for c in todo:
                    record(process_and_write(c, writer, cropper, work_max_side))
                    if time.monotonic() - last_index > INDEX_EVERY_S:
                        writer.rebuild_index()
                        last_index = time.monotonic()
        else:
            for r in _run_pool(todo, writer, params, n_workers, device, work_max_side):
                record(r)
                if time.monotonic() - last_index > INDEX_EVERY_S:
                    writer.rebuild_index()
                    last_index = time.monotonic()
    except KeyboardInterrupt:
        report.interrupted = True
        raise
    finally:
        writer.rebuild_index()
        report.seconds = time.perf_counter() - t_start
    return report


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Kill the pool's worker processes now (on Ctrl-C / SIGTERM), rather than waiting for the clips
    in flight: what they leave half-written is cleaned up when those clips are redone. Python 3.11's
    executor has no public way to do this, hence its private process table."""
    for p in list(getattr(pool, "_processes", {}).values()):
        p.kill()


def _run_pool(todo: list[SourceClip], writer: CorpusWriter, params: PreprocessParams, workers: int,
              device: str | None, work_max_side: int | None) -> Iterator[ClipResult]:
    """Process `todo` in a pool of `workers` processes, yielding results as clips finish.

    At most 2 * workers clips are in flight (a Ctrl-C loses little). If a worker process dies (a
    crash in a decoder, out of memory), its clips are recorded as failed and a new pool is started.
    Workers end with the main process, however it ends (see `_die_with`).
    """
    # forkserver: workers fork from a clean server process that imported this module (and torch) once,
    # so starting them is cheap; forking this process directly could inherit locks held by its threads
    # (rich's refresh thread, torch's pool), and spawn would re-import torch in every worker.
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
    else:
        ctx = multiprocessing.get_context("spawn")
    queue = list(reversed(todo))
    while queue:
        pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=(str(writer.root), params, device, os.getpid()))
        inflight: dict[Future[ClipResult], SourceClip] = {}
        try:
            while queue or inflight:
                while queue and len(inflight) < 2 * workers:
                    c = queue.pop()
                    inflight[pool.submit(_worker_run, c, work_max_side)] = c
                finished, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in finished:
                    c = inflight.pop(fut)
                    yield fut.result()
        except BrokenProcessPool:
            for c in inflight.values():
                reason = ("worker process died (a crash while decoding, or out of memory); "
                          "re-run to retry, with fewer --workers if memory is short")
                writer.write_skipped(c.clip_id, str(c.video), reason, permanent=False, **_stamp(c.video))
                yield ClipResult(c.clip_id, "failed", reason=reason)
        except (KeyboardInterrupt, GeneratorExit):  # GeneratorExit: the consumer stopped (its own Ctrl-C)
            _stop_workers(pool)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def preprocess_file(src: SourceClip, out: str | os.PathLike[str], params: PreprocessParams,
                    device: str | None = None, work_max_side: int | None = WORK_MAX_SIDE) -> ClipResult:
    """Preprocess a single video into the corpus at `out`; input problems raise (nothing is written).

    A clip that is readable but unfit for training (too short for one window, silent) is written
    all the same, with its problems in the result's `warnings`.
    """
    check_params(params)
    out = Path(out)
    with contextlib.ExitStack() as stack:
        writer = None
        if is_corpus(out):
            writer = CorpusWriter(out, params)
            stack.enter_context(lock_corpus(out))
            claim_ids([src], writer)
            if writer.is_done(src.clip_id) and writer.clip_problem(src.clip_id) is None:
                return ClipResult(src.clip_id, "done", n_frames=0, reason="already in the corpus")
        elif out.exists() and (not out.is_dir() or any(out.iterdir())):
            CorpusWriter(out, params)  # raises the "not a corpus" error before any work is done
        t0 = time.perf_counter()
        with torch_threads(TORCH_THREADS):
            faces, spec, facts = process_clip(src, params, make_cropper(params, device), work_max_side)
        if writer is None:
            writer = CorpusWriter(out, params)
            stack.enter_context(lock_corpus(out))
        warnings = facts.pop("warnings")
        record = ClipRecord(src.clip_id, str(src.video), src.speaker, src.emotion, src.intensity,
                            src.sentence, len(faces), src.split)
        extra = {"audio_source": str(src.audio or src.video), "work_max_side": work_max_side, **facts}
        if warnings:
            extra["warnings"] = warnings
        writer.write_clip(record, faces, spec, truth=src.truth, extra=extra)
        writer.clear_skipped(src.clip_id)
        writer.rebuild_index()
    return ClipResult(src.clip_id, "done", n_frames=len(faces), seconds=time.perf_counter() - t0,
                      warnings=warnings)
