"""Hand-written kernels reached through the XLA FFI (see onednn.py)."""
