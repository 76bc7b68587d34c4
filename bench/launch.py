"""Where a study's missing runs train: here, one after another (``local``), or as jobs
through submitit (``submitit``: SLURM on a cluster, its local executor's subprocesses on a
machine without one). No launcher of our own: submitit submits, waits and keeps each
job's logs; the study collects the finished runs exactly as ``--collect-only`` does.

A study file's ``launcher:`` block (or ``compress compare --launcher submitit
--launcher-arg partition=gpu``) says which, with the job's resources.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from compress.errors import UserError

if TYPE_CHECKING:
    from compress.config import RunConfig

EXTRA = "pip install -e '.[cluster]'"


class LaunchError(UserError, RuntimeError):
    """A study job failed or could not be submitted; the message names its log."""


class LauncherConfig(BaseModel):
    """How a study's missing runs are trained (``launcher:`` in the study file)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "submitit"] = Field(
        "local", description="local: in this process, one run after another; submitit: "
        "one job per recipe x seed")
    cluster: Literal["slurm", "local", "debug"] | None = Field(
        None, description="submitit's executor (default: SLURM where sbatch exists, else "
        "local subprocesses)")
    folder: str | None = Field(None, description="job logs and pickles (default: "
                               "<study dir>/jobs)")
    timeout_min: int = Field(60, ge=1)
    partition: str | None = None
    gpus_per_job: int = Field(0, ge=0)
    cpus_per_task: int | None = Field(None, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    extra: dict[str, Any] = Field(default_factory=dict,
                                  description="further submitit parameters (slurm_qos, ...)")


@dataclass(frozen=True)
class TrainJob:
    """One missing run of a study: its recipe, where it goes, whether it continues."""

    name: str  # "<recipe> seed <k>"
    cfg: RunConfig
    run_dir: Path
    resume: bool  # continue its checkpoints/last.pt


# (jobs, progress bars) -> None, every job trained (or an error naming the failed ones)
Launcher = Callable[[list[TrainJob], bool], None]
# trains one job in whatever process runs it: (recipe, run dir to resume or None, new run
# dir or None, progress bar); compress's loop, handed in by the command
Trainer = Callable[["RunConfig", "Path | None", "Path | None", bool], object]


def run_job(train: Trainer, job: TrainJob, show: bool) -> None:
    train(job.cfg, job.run_dir if job.resume else None, None if job.resume else job.run_dir,
          show)


def job_error(e: BaseException) -> str:
    """The last line of a failed job's traceback (submitit wraps it between two rules of
    dashes, its log paths after), at most 200 characters."""
    lines = [ln.strip() for ln in str(e).splitlines()]
    rules = [i for i, ln in enumerate(lines) if ln.startswith("-----")]
    body = lines[rules[0] + 1:rules[1]] if len(rules) >= 2 else lines
    body = [ln for ln in body if ln]
    return (body[-1] if body else type(e).__name__)[:200]


def local_launcher(train: Trainer) -> Launcher:
    """Each job in this process, in order (an error stops the study, as one run would)."""
    def launch(jobs: list[TrainJob], show: bool) -> None:
        for job in jobs:
            run_job(train, job, show)

    return launch


def submitit_launcher(cfg: LauncherConfig, study_dir: Path, train: Trainer,
                      log=print) -> Launcher:
    """Each job through ``submitit.AutoExecutor``, submitted as one batch (a SLURM array),
    waited on; failed jobs are named with their log files.

    Raises:
        LaunchError: submitit is not installed (the extra named).
    """
    if importlib.util.find_spec("submitit") is None:
        raise LaunchError(f"--launcher submitit needs the submitit package: {EXTRA}")
    import submitit

    folder = Path(cfg.folder) if cfg.folder else study_dir / "jobs"
    params: dict[str, Any] = {"timeout_min": cfg.timeout_min, "gpus_per_node": cfg.gpus_per_job,
                              **({"slurm_partition": cfg.partition} if cfg.partition else {}),
                              **({"cpus_per_task": cfg.cpus_per_task} if cfg.cpus_per_task
                                 else {}),
                              **({"mem_gb": cfg.mem_gb} if cfg.mem_gb else {}), **cfg.extra}

    def launch(jobs: list[TrainJob], show: bool) -> None:
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=cfg.cluster)
        try:
            executor.update_parameters(name=study_dir.name, **params)
        except (TypeError, ValueError) as e:  # an unknown or bad parameter, named
            raise LaunchError(f"launcher: {e}") from None
        with executor.batch():
            submitted = [executor.submit(run_job, train, job, False) for job in jobs]
        for job, sub in zip(jobs, submitted):
            log(f"[{job.name}] submitted as job {sub.job_id} ({executor.cluster}) -> "
                f"{job.run_dir}")
        failed = []
        for job, sub in zip(jobs, submitted):
            try:
                sub.result()
            except Exception as e:  # noqa: BLE001 - a job's own error, reported with its log
                failed.append(f"{job.name} (job {sub.job_id}: {job_error(e)}; "
                              f"log {sub.paths.stderr})")
        if failed:
            raise LaunchError(f"{len(failed)} of {len(jobs)} study job(s) failed: "
                              + "; ".join(failed))

    return launch
