"""Training of every model kind with one loop: config, checkpoints, stage-1 feature cache, DDP.

Loading a trained model (for manipulation / evaluation)::

    from avmdvae.training import load_run
    run = load_run("runs/mdvae")            # best.pt; which="last" for the latest
    run.model, run.config, run.kind, run.modality, run.corpus, run.metrics
    vq = run.stage1_models()                # {"audio": AudioVQVAE, "visual": VisualVQVAE} (hash-checked)
"""

from typing import Any

__all__ = ["LoadedRun", "is_run_dir", "load_checkpoint", "load_run", "sha256_file"]


def __getattr__(name: str) -> Any:
    """Import torch only when a name above is used: the CLI imports light submodules (config,
    progress) of this package at start-up, and `avmdvae --help` must not wait for torch."""
    if name in __all__:
        from avmdvae.training import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
