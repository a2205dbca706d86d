"""Where blocks run: the Dask cluster, its preflight, SLURM, progress, costly-geometry checks, the numba cache."""
