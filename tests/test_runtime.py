"""avmdvae.runtime: the allocator setting is applied once and leaves tensors working."""

from __future__ import annotations

import sys

import pytest
import torch

from avmdvae import runtime


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_keep_freed_memory_tunes_glibc_once() -> None:
    first = runtime.keep_freed_memory()
    assert first is True  # the CI machines run glibc
    assert runtime.keep_freed_memory() is first  # idempotent: the second call changes nothing
    x = torch.randn(3, 1 << 20)  # 12 MB: above glibc's default mmap threshold, now from the heap
    y = x * 2
    del x
    assert torch.equal(y / 2, y * 0.5)
