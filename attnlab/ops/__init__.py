"""Attention ops: each kernel lives beside a plain PyTorch reference it is tested against."""
