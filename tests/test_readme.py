"""Every command of the README's tour runs, in order, in a fresh folder (slow: a few minutes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from avmdvae import media

ROOT = Path(__file__).resolve().parent.parent


def tour_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## A five-minute tour\s+```sh\n(.*?)```", text, re.S)
    assert block, "README.md has no tour block"
    lines = [ln.strip() for ln in block.group(1).splitlines()]
    return [ln for ln in lines if ln and not ln.startswith(("#", "source "))]


def test_tour_uses_only_real_commands() -> None:
    from typer.testing import CliRunner

    from avmdvae.cli import app

    names = {ln.split()[1] for ln in tour_commands() if ln.startswith("avmdvae ")}
    for name in names:
        assert CliRunner().invoke(app, [name, "--help"]).exit_code == 0, name


@pytest.mark.slow
def test_readme_tour_runs(tmp_path: Path) -> None:
    (tmp_path / "models").symlink_to(ROOT / "models")
    script = "set -euo pipefail\n" + "\n".join(tour_commands()) + "\n"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("resynth", "swap-w", "interp", "denoised"):
        assert media.probe(tmp_path / "out" / f"{name}.mp4").has_audio
    assert (tmp_path / "out" / "resynth.png").stat().st_size > 0
    assert (tmp_path / "out" / "report" / "report.md").is_file()
