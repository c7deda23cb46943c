"""Tests. In-process engine tests compute as a worker does: with the host's OpenBLAS when it has one."""

from worker.cpu_tuning import preload_blas

preload_blas()  # before any test module imports mlx.core, which binds its BLAS when it loads
