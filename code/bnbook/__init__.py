"""bnbook: Batch Normalization from scratch, proven equal to PyTorch."""
