"""Preprocessing on real data, by real users: crafted corpora, id collisions, concurrent runs, killed
runs and their workers, leftover temporaries, SIGTERM, silent and too-short clips."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from avmdvae import atomic
from avmdvae import preprocess as pp
from avmdvae.corpus import ClipRecord, Corpus, CorpusWriter, lock_corpus
from avmdvae.errors import CorpusError
from avmdvae.layouts import discover

from .test_preprocess import FAST, face_frames, talking, tone

REPO = Path(__file__).resolve().parents[1]


def _write_clip(root: Path, cid: str, n: int = 40) -> CorpusWriter:
    w = CorpusWriter(root, FAST)
    faces = np.zeros((n, 64, 64, 3), np.uint8)
    spec = np.ones((n, 513), np.float32)
    w.write_clip(ClipRecord(cid, f"/in/{cid}.mp4", "s1", None, None, None, n, "train"), faces, spec)
    return w


# ------------------------------------------------------------------------ 1. ids and paths from disk


@pytest.mark.parametrize("bad_id", ["../../x", "/tmp/avmdvae-escape", "..", "other", "a/b", ""])
def test_crafted_clip_id_is_refused(tmp_path, bad_id):
    root = tmp_path / "corpus"
    _write_clip(root, "a")
    clip_json = root / "clips" / "a" / "clip.json"
    meta = json.loads(clip_json.read_text())
    meta["clip_id"] = bad_id
    clip_json.write_text(json.dumps(meta))
    with pytest.raises(CorpusError, match="clip.json") as e:
        Corpus.open(root)
    assert str(clip_json) in str(e.value) and "\n" not in str(e.value)


def test_crafted_manifest_and_lookups_cannot_escape(tmp_path):
    root = tmp_path / "corpus"
    w = _write_clip(root, "a")
    w.rebuild_index()
    manifest = root / "manifest.csv"
    manifest.write_text(manifest.read_text().replace("\na,", "\n../../a,"))
    c = Corpus.open(root)  # the manifest is only a cache: its row for an unknown id is not used
    assert [x.clip_id for x in c.clips] == ["a"]
    with pytest.raises(CorpusError):
        c.clip_dir("../../a")
    with pytest.raises(CorpusError):
        CorpusWriter(root, FAST).clip_dir("/etc")


def test_crafted_frame_count_is_refused(tmp_path):
    root = tmp_path / "corpus"
    _write_clip(root, "a")
    clip_json = root / "clips" / "a" / "clip.json"
    meta = json.loads(clip_json.read_text())
    meta["n_frames"] = -5
    clip_json.write_text(json.dumps(meta))
    with pytest.raises(CorpusError, match="clip.json"):
        Corpus.open(root)


def test_symlinks_in_a_corpus_are_not_followed(tmp_path):
    root = tmp_path / "corpus"
    _write_clip(root, "a")
    outside = tmp_path / "elsewhere"
    _write_clip(outside, "b")
    np.save(tmp_path / "secret.npy", np.zeros((40, 64, 64, 3), np.uint8))
    faces = root / "clips" / "a" / "faces.npy"
    faces.unlink()
    faces.symlink_to(tmp_path / "secret.npy")
    (root / "clips" / "b").symlink_to(outside / "clips" / "b", target_is_directory=True)
    c = Corpus.open(root)
    assert [x.clip_id for x in c.clips] == ["a"]  # the linked folder is not a clip of this corpus
    with pytest.raises(CorpusError, match="symbolic link"):
        c.faces("a")


# ------------------------------------------------------------------------------- 2. id collisions


def test_same_stem_in_two_folders_keeps_both_clips(tmp_path):
    a = talking(tmp_path / "a" / "take.mp4", n=30, seed=1)
    b = talking(tmp_path / "b" / "take.mp4", n=30, seed=2)
    out = tmp_path / "out"
    ra = pp.preprocess_file(discover(a).clips[0], out, FAST)
    rb = pp.preprocess_file(discover(b).clips[0], out, FAST)
    assert rb.reason != "already in the corpus" and ra.clip_id != rb.clip_id
    c = Corpus.open(out)
    assert sorted(Path(x.source) for x in c.clips) == sorted([a.absolute(), b.absolute()])
    # stable: each file maps to the same clip again
    assert pp.preprocess_file(discover(b).clips[0], out, FAST).reason == "already in the corpus"
    assert pp.preprocess_file(discover(a).clips[0], out, FAST).reason == "already in the corpus"
    assert len(Corpus.open(out).clips) == 2


def test_non_ascii_names_do_not_collide_across_runs(tmp_path):
    e1 = talking(tmp_path / "in" / "café.mp4", n=30, seed=1)
    out = tmp_path / "out"
    pp.run_batch(discover(tmp_path / "in"), out, FAST, workers=1)
    e2 = talking(tmp_path / "in" / "cafè.mp4", n=30, seed=2)
    rep = pp.run_batch(discover(tmp_path / "in"), out, FAST, workers=1)
    assert rep.done == 1 and rep.already_done == 1
    assert sorted(Path(x.source).name for x in Corpus.open(out).clips) == sorted([e1.name, e2.name])


# ---------------------------------------------------------------------- 3. locking and verification


def test_second_run_is_refused_while_the_corpus_is_locked(tmp_path):
    src = tmp_path / "in"
    talking(src / "s1" / "c.mp4", n=30)
    out = tmp_path / "out"
    CorpusWriter(out, FAST)
    with lock_corpus(out):
        with pytest.raises(CorpusError) as e:
            pp.run_batch(discover(src), out, FAST, workers=1)
        msg = str(e.value)
        assert str(os.getpid()) in msg and ".lock" in msg and "\n" not in msg
        with pytest.raises(CorpusError, match=str(os.getpid())):
            pp.preprocess_file(discover(src).clips[0], out, FAST)
    assert pp.run_batch(discover(src), out, FAST, workers=1).done == 1  # released


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "out"
    CorpusWriter(out, FAST)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".preprocess.lock").write_text(json.dumps({"pid": dead.pid}))
    with lock_corpus(out):
        assert str(os.getpid()) in (out / ".preprocess.lock").read_text()


def test_shards_of_one_run_may_share_the_corpus(tmp_path):
    out = tmp_path / "out"
    CorpusWriter(out, FAST)
    with lock_corpus(out, (1, 2)), lock_corpus(out, (2, 2)):
        with pytest.raises(CorpusError):
            with lock_corpus(out, (1, 2)):
                pass
        with pytest.raises(CorpusError):
            with lock_corpus(out):
                pass


def test_rerun_redoes_clips_whose_arrays_are_missing_or_unreadable(tmp_path):
    src = tmp_path / "in"
    for i in range(3):
        talking(src / f"s{i}" / "c.mp4", n=30, seed=i)
    out = tmp_path / "out"
    assert pp.run_batch(discover(src), out, FAST, workers=1).done == 3
    ids = [c.clip_id for c in Corpus.open(out).clips]
    (out / "clips" / ids[0] / "spec.npy").unlink()
    (out / "clips" / ids[1] / "faces.npy").write_bytes(b"garbage")
    rep = pp.run_batch(discover(src), out, FAST, workers=1)
    assert rep.done == 2 and rep.already_done == 1
    c = Corpus.open(out)
    assert c.spec(ids[0]).shape == (30, 513) and c.faces(ids[1]).shape == (30, 64, 64, 3)


# ------------------------------------------------------------------ 4. workers die with their parent


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(p.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_pool_workers_die_with_a_killed_parent(tmp_path):
    src = tmp_path / "in"
    for i in range(6):  # 10 s clips through MTCNN: the pool is busy for a while
        talking(src / f"s{i}" / "c.mp4", n=300, seed=i)
    script = textwrap.dedent(f"""
        from avmdvae import preprocess as pp
        from avmdvae.corpus import PreprocessParams
        from avmdvae.layouts import discover
        pp.run_batch(discover({str(src)!r}), {str(tmp_path / "out")!r}, PreprocessParams(), workers=2)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(workers) < 2:
            workers = _descendants(proc.pid) - _children(proc.pid)  # the fork server's children
            time.sleep(0.05)
        assert len(workers) >= 2 and proc.poll() is None, "the pool never started"
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.2)
        assert not [p for p in workers if _alive(p)], "pool workers outlived their killed parent"
    finally:
        for p in workers:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


def _children(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return set()
    return {int(x) for x in text.split()}


# -------------------------------------------------------------------- 5. temporaries and SIGTERM


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporaries_of_dead_processes_are_cleaned(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    stale = folder / atomic.temp_name("movie.mp4", _dead_pid())
    live = folder / atomic.temp_name("movie.mp4", os.getppid())  # a running process, older than the file
    foreign = folder / ".movie.abcd1234.tmp.mp4"  # not of our naming: not ours to delete
    for p in (stale, live, foreign):
        p.write_bytes(b"partial")
    atomic.write_bytes(folder / "movie.mp4", b"done")
    assert (folder / "movie.mp4").read_bytes() == b"done"
    assert not stale.exists() and live.exists() and foreign.exists()
    # a file older than the process that now has its pid (pid reused) is stale too
    old = folder / atomic.temp_name("other.npy", os.getppid())
    old.write_bytes(b"x")
    os.utime(old, (1_000_000, 1_000_000))
    assert atomic.sweep_stale_temps(folder) == 1 and not old.exists()


def test_corpus_temporaries_left_by_a_killed_run_are_cleaned(tmp_path):
    src = tmp_path / "in"
    talking(src / "s1" / "c.mp4", n=30)
    out = tmp_path / "out"
    pp.run_batch(discover(src), out, FAST, workers=1)
    dead = _dead_pid()
    leftovers = [out / atomic.temp_name("manifest.csv", dead),
                 out / "skipped" / atomic.temp_name("x.json", dead)]
    (out / "skipped").mkdir(exist_ok=True)
    for p in leftovers:
        p.write_text("half")
    pp.run_batch(discover(src), out, FAST, workers=1)
    assert not [p for p in leftovers if p.exists()]


def test_sigterm_stops_preprocess_cleanly(tmp_path):
    src = tmp_path / "in"
    for i in range(3):
        talking(src / f"s{i}" / "c.mp4", n=30, seed=i)
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        from avmdvae import preprocess as pp
        from avmdvae.cli import app
        real = pp.process_clip
        calls = []
        def slow(*a, **k):
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(60)
            return real(*a, **k)
        pp.process_clip = slow
        app(["preprocess", {str(src)!r}, {str(out)!r}, "--detector", "none", "--workers", "1"])
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 143, (r.returncode, r.stderr[-2000:])
    err = " ".join(r.stderr.split())
    assert "Traceback" not in err and "terminated" in err and "re-run" in err, err
    assert "1 clip" in err
    assert len(Corpus.open(out).clips) == 1
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


# -------------------------------------------------------------------- 7. silent and too-short clips


def _silent(path: Path, n: int = 30) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    from avmdvae import media

    media.write_av(path, face_frames(n), np.zeros(n * 16_000 // 30, np.float32))
    return path


def test_batch_skips_silent_and_too_short_clips_with_reasons(tmp_path):
    src = tmp_path / "in"
    talking(src / "good.mp4", n=36)
    talking(src / "short.mp4", n=9)  # 0.3 s: shorter than one 30-frame training window
    _silent(src / "mute.mp4")
    out = tmp_path / "out"
    rep = pp.run_batch(discover(src), out, FAST, workers=1)
    assert rep.done == 1
    reasons = {r.clip_id: r.reason or "" for r in rep.skipped}
    assert set(reasons) == {"short", "mute"}
    assert "shorter than one training window" in reasons["short"]
    assert "silent" in reasons["mute"]
    assert {s["clip_id"] for s in Corpus.open(out).skipped()} == {"short", "mute"}


def test_single_file_warns_about_silent_or_short_clips(tmp_path):
    from typer.testing import CliRunner

    from avmdvae.cli import app

    short = talking(tmp_path / "short.mp4", n=9)
    r = CliRunner().invoke(app, ["preprocess", str(short), str(tmp_path / "o1"), "--detector", "none"])
    assert r.exit_code == 0, r.output
    assert "warning" in r.output and "shorter than one training window" in " ".join(r.output.split())
    mute = _silent(tmp_path / "mute.mp4")
    r = CliRunner().invoke(app, ["preprocess", str(mute), str(tmp_path / "o2"), "--detector", "none"])
    assert r.exit_code == 0 and "warning" in r.output and "silent" in r.output, r.output


def test_short_clip_unit_check():
    (short,) = pp.clip_problems(10, tone(1.0), FAST)
    assert "shorter than one training window" in short
    (silent,) = pp.clip_problems(30, np.zeros(16_000, np.float32), FAST)
    assert "silent" in silent
    assert pp.clip_problems(30, tone(1.0), FAST) == []
