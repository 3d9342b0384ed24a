"""SLURM: the batch script that runs ``alexnet train`` under torchrun on every node, and requeues
the job when the scheduler warns that it will end it.

The path a preempted or timed-out job takes, every step an existing mechanism:

1. ``#SBATCH --signal=B:USR1@SECONDS``: SECONDS before the time limit SLURM sends SIGUSR1 to the
   batch shell only (``B:``); its trap notes the warning and passes it to ``srun``, which forwards
   it to the job step.
2. torchrun's agent forwards SIGUSR1 to its workers (``--signals-to-handle``, torch >= 2.9).
3. Each worker's :class:`~alexnet.signals.StopRequest` takes SIGUSR1 as SIGTERM with notice: the
   step finishes, the processes agree on the stop, rank 0 writes a checkpoint, they exit 143. A
   worker that gets the warning twice (from SLURM, where it signals every process of the step, and
   from the agent) still stops at that point, and the loader's worker processes ignore it.
4. The batch shell, warned and with training unfinished (a non-zero exit), runs
   ``scontrol requeue $SLURM_JOB_ID``: the same job (same id, same script) goes back to the queue.
5. The requeued script finds RUN/config.yaml and adds ``--resume``: training continues from the
   checkpoint, bit-exactly.

A preemption without the warning (SLURM's SIGTERM, then SIGKILL after its grace time) takes the
SIGTERM path of ``alexnet train``; the job is requeued by SLURM itself (``--requeue``) and step 5
applies. Nothing here imports torch: the script is text.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

HEADER = "# written by `alexnet slurm`"  # the first comment line: a script this command may replace
WARNING_SIGNAL = "USR1"
# torchrun's own default list, plus the scheduler's warning
SIGNALS_TO_HANDLE = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"

_TIME = re.compile(r"^(?:(?P<d>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?$")


def time_limit_s(text: str) -> int | None:
    """Seconds in a SLURM time limit (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``,
    ``D-HH:MM:SS``), or None when ``text`` is none of them."""
    m = _TIME.match(text.strip())
    if not m:
        return None
    d, a, b, c = (int(x) if x is not None else None for x in m.group("d", "a", "b", "c"))
    if d is None:
        if c is not None:  # HH:MM:SS
            return a * 3600 + b * 60 + c  # type: ignore[operator]
        return a * 60 + (b or 0)  # MM or MM:SS
    return d * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)  # D-HH[:MM[:SS]]


@dataclass
class BatchJob:
    """One training job: ``nodes`` × ``gpus_per_node`` processes running ``python -m alexnet train
    *train_args`` (which hold ``--out run``), from ``workdir``."""

    nodes: int
    gpus_per_node: int
    time: str
    train_args: list[str]
    run: Path  # the run folder (absolute): --resume is added once it holds a config
    workdir: Path
    python: str
    job_name: str = "alexnet"
    warning_s: int = 120
    port: int = 29500
    log: Path | None = None  # the job's output file (%j: the job id); default beside the run folder
    cpus_per_gpu: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    mem: str | None = None
    extra_sbatch: list[str] = field(default_factory=list)  # further ``--option=value`` lines, as given


def sbatch_script(job: BatchJob) -> str:
    """The batch script for ``job`` (bash; ``sbatch FILE`` submits it)."""
    q = shlex.quote
    log = job.log or job.run.parent / f"{job.run.name}-slurm-%j.out"
    options = [f"--job-name={job.job_name}", f"--nodes={job.nodes}", "--ntasks-per-node=1",
               f"--gpus-per-node={job.gpus_per_node}", f"--time={job.time}",
               f"--signal=B:{WARNING_SIGNAL}@{job.warning_s}", "--requeue", "--open-mode=append",
               f"--output={log}", f"--chdir={job.workdir}"]
    if job.cpus_per_gpu:
        options.append(f"--cpus-per-task={job.cpus_per_gpu * job.gpus_per_node}")
    for name in ("partition", "account", "qos", "mem"):
        value = getattr(job, name)
        if value:
            options.append(f"--{name}={value}")
    options.extend(job.extra_sbatch)
    resume_given = "--resume" in job.train_args
    train = " ".join(q(a) for a in job.train_args)
    lines = [
        "#!/bin/bash",
        f"{HEADER}: {job.nodes} node(s) x {job.gpus_per_node} process(es), torchrun on every node.",
        f"# SLURM's warning (SIG{WARNING_SIGNAL}, {job.warning_s} s before the time limit) -> checkpoint -> scontrol requeue",
        "# -> the requeued job resumes with --resume. Submit with: sbatch THIS_FILE",
        *(f"#SBATCH {o}" for o in options),
        "",
        "set -u",
        f"run={q(str(job.run))}",
        "resume=",
        "# --resume is given" if resume_given else
        'if [ -f "$run/config.yaml" ]; then resume=--resume; fi  # a requeued (or restarted) job continues the run',
        'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)  # the rendezvous: the first node',
        "warned= interrupted= pid=",
        "# torchrun's agent passes the warning on, then waits this long for its workers' checkpoint before SIGKILL",
        f"export TORCH_ELASTIC_SHUTDOWN_TIMEOUT={max(30, job.warning_s - 15)}",
        # B: the warning reaches this shell only: note it and pass it on to the job step
        f"trap 'warned=1 interrupted=1; echo \"alexnet slurm: SIG{WARNING_SIGNAL} from the scheduler: checkpointing\" >&2; "
        f"[ -n \"$pid\" ] && kill -{WARNING_SIGNAL} \"$pid\" 2>/dev/null' {WARNING_SIGNAL}",
        f"srun --nodes={job.nodes} --ntasks-per-node=1 --kill-on-bad-exit=1 \\",
        f"  {q(job.python)} -m torch.distributed.run --nnodes={job.nodes} --nproc-per-node={job.gpus_per_node} \\",
        f'  --rdzv-backend=c10d --rdzv-endpoint="$head:{job.port}" --rdzv-id="$SLURM_JOB_ID" \\',
        f"  --signals-to-handle={SIGNALS_TO_HANDLE} \\",
        f"  -m alexnet {train} $resume &",
        "pid=$!",
        "while :; do  # a wait cut short by the trap is waited again, for the step's own exit status",
        '  interrupted=; wait "$pid"; rc=$?',
        '  [ -n "$interrupted" ] || break',
        "done",
        'if [ -n "$warned" ] && [ "$rc" -ne 0 ]; then',
        '  echo "alexnet slurm: training stopped (exit $rc) after the warning; requeueing job $SLURM_JOB_ID" >&2',
        '  scontrol requeue "$SLURM_JOB_ID"',
        "  exit 0",
        "fi",
        'exit "$rc"',
        "",
    ]
    return "\n".join(lines)


def written_by_us(path: Path) -> bool:
    """Whether ``path`` is a batch script this command wrote (its second line is :data:`HEADER`)."""
    with open(path, "rb") as f:
        head = f.read(512).decode("utf-8", "replace").splitlines()
    return len(head) > 1 and head[1].startswith(HEADER)
