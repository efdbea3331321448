"""Shared pytest configuration."""

import os

# Keep the 2-core CI machine responsive: torch's intra-op threads default to all cores.
os.environ.setdefault("OMP_NUM_THREADS", "2")
