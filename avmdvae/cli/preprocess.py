"""`avmdvae preprocess` and `avmdvae info` (being written)."""
