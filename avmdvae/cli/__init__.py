"""Command-line interface: `avmdvae preprocess | synth | train | resynth | swap | interpolate |
denoise | eval | demo | info`. Each module below registers its commands on the shared app; the
commands are thin layers over the Python API."""

from avmdvae.cli import demo as _demo  # noqa: E402,F401  (demo)
from avmdvae.cli import evaluate as _evaluate  # noqa: E402,F401  (eval)
from avmdvae.cli import manipulate as _manipulate  # noqa: E402,F401  (resynth, swap, interpolate, denoise)

# Importing a module registers its commands.
from avmdvae.cli import preprocess as _preprocess  # noqa: E402,F401  (preprocess, info)
from avmdvae.cli import synth as _synth  # noqa: E402,F401  (synth)
from avmdvae.cli import train as _train  # noqa: E402,F401  (train vqvae|mdvae|dsae)
from avmdvae.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
