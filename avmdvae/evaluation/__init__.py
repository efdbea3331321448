"""Evaluation: objective metrics, linear probes, disentanglement tests and the `avmdvae eval` report.

Submodules: metrics (STOI, PESQ, PSNR, SSIM, ...), probes (few-label linear probes), disentangle
(factor matrix, swap test), tasks (resynth / emotion / disentangle / denoise), report (json, md, png).
Importing this package does not import scikit-learn, pystoi or pesq; they are loaded when used.
"""
