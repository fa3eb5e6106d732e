"""Attention and normalization kernels: FlashAttention-2 (plain PyTorch tiles and Triton), fused RMSNorm (Triton).

Triton kernels run on CUDA, or on CPU under ``TRITON_INTERPRET=1`` (set before import, as
tests/conftest.py does). The model picks Triton only on CUDA (``ModelConfig.attention/norm``);
every kernel has a plain-torch path.
"""
