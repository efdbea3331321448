"""Training of every model kind with one loop: config, checkpoints, stage-1 feature cache, DDP.

Loading a trained model (for manipulation / evaluation)::

    from avmdvae.training import load_run
    run = load_run("runs/mdvae")            # best.pt; which="last" for the latest
    run.model, run.config, run.kind, run.modality, run.corpus, run.metrics
    vq = run.stage1_models()                # {"audio": AudioVQVAE, "visual": VisualVQVAE} (hash-checked)
"""

from avmdvae.training.checkpoint import LoadedRun, is_run_dir, load_checkpoint, load_run, sha256_file

__all__ = ["LoadedRun", "is_run_dir", "load_checkpoint", "load_run", "sha256_file"]
