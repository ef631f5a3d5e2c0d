"""Compiled kernels (Cython + OpenMP). Call them through :mod:`cnncore.functional`,
which validates arguments; these functions assume valid, C-contiguous inputs."""
