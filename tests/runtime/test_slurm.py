"""SLURM through dask-jobqueue, tested by building the job script: no SLURM installation needed."""

import subprocess
import sys

import pytest

from blockseg import BlocksegError

pytest.importorskip("dask_jobqueue")

from blockseg.runtime.slurm import SlurmSettings, job_script  # noqa: E402


def test_cpu_job_script_carries_the_settings():
    script = job_script(SlurmSettings(cores=16, memory="64GB", processes=4, queue="batch", account="lab",
                                      walltime="02:30:00", job_script_prologue=["module load foo"]))  # fmt: skip
    assert "#SBATCH -p batch" in script and "#SBATCH -A lab" in script
    assert "#SBATCH -t 02:30:00" in script and "#SBATCH --cpus-per-task=16" in script
    assert "module load foo" in script
    assert sys.executable in script and "distributed.cli.dask_worker" in script
    assert "--nworkers 4" in script and "--nthreads 4" in script
    assert "GPU=1" not in script and "--gres" not in script


def test_gpu_job_asks_slurm_for_gpus_and_gives_each_worker_the_gpu_resource():
    script = job_script(SlurmSettings(cores=8, memory="32GB", gpus=2, job_extra_directives=["--constraint=a100"]))
    assert "#SBATCH --gres=gpu:2" in script and "#SBATCH --constraint=a100" in script
    assert "--resources GPU=1" in script and "--nworkers 2" in script


@pytest.mark.parametrize(
    "settings, message",
    [
        (SlurmSettings(cores=0), "cores must be at least 1"),
        (SlurmSettings(cores=4, processes=8), "processes must be between 1 and cores"),
        (SlurmSettings(cores=8, gpus=2, processes=4), "one worker per GPU"),
        (SlurmSettings(walltime="two hours"), "walltime must look like HH:MM:SS"),
        (SlurmSettings(memory="lots"), "memory must look like"),
    ],
)
def test_bad_settings_are_refused_before_building_a_cluster(settings, message):
    with pytest.raises(BlocksegError, match=message):
        job_script(settings)


@pytest.mark.slow  # the CLI in a subprocess
def test_cluster_slurm_dry_run_prints_the_job_script():
    proc = subprocess.run(
        [sys.executable, "-m", "blockseg_cli.main", "cluster", "slurm", "--dry-run", "--cores", "4", "--memory", "8GB",
         "--gpus", "1", "--partition", "gpu"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("#!") and "#SBATCH -p gpu" in proc.stdout and "--resources GPU=1" in proc.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "blockseg_cli.main", "cluster", "slurm", "--dry-run", "--walltime", "soon"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "walltime" in bad.stderr
