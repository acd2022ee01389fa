"""MLX ports (Apple silicon; `mlx[cpu]` on Linux): the LM backend and the F_φ head.

Install with the `mlx` extra (`pip install -e '.[mlx]'`). Everything here imports `mlx` lazily
through these modules, so the rest of the package never needs it.
"""
