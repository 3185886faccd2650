"""Running a job file on a Slurm cluster (docs/slurm.md). Imports neither torch nor the daemon.

    script.py    the sbatch script of a job file (pure)
    records.py   what `submit --slurm` and `trainsup run` leave under the state dir's slurm/
    cluster.py   the Slurm commands: sbatch, scontrol, sacct, scancel
    gpus.py      inside an allocation, only the GPUs Slurm gave the job
"""
