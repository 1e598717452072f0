"""One job over several processes: data parallel, each optimizer step shared by every process.

    tunery tune --processes 2 ...                                   # tunery starts the other processes
    torchrun --nproc-per-node 2 -m tunery tune --output DIR ...     # or a launcher does
    accelerate launch --multi_gpu --num_processes 2 -m tunery tune --output DIR ...   # --multi_gpu on CPUs too
    accelerate launch --use_fsdp --num_processes 2 -m tunery tune --method full ...    # sharded (below)

Every process plans the same epoch (a function of the seed) and the same micro-batches of each step
(``micro_batches``: they do not depend on the process count); process ``r`` runs micro-batches
``r, r + N, ...``. Each backward pass divides by the trained tokens of the whole step, as with one
process; gradients are then summed across processes (one all-reduce per step, gloo on CPUs, NCCL on
GPUs) so every process holds the one-process gradient and takes the same optimizer step. The global
batch, the loss normalisation and the checkpoint (written by process 0 alone, in the one-process
format) do not depend on N, so a run checkpointed with N processes resumes with M.

A stop request (cancel, Ctrl-C, the server going away) seen by process 0 travels with the step's
all-reduce, so every process stops at the same step boundary. A process that dies fails the next
all-reduce in the others, which exit with status 75 (``ProcessLost``) without ending the job: the
scheduler's retry resumes it from the last checkpoint. Helpers end with process 0.

Full tuning of a model that does not fit one device shards instead (``--fsdp``, ``computeConfig.fsdp``, or
``accelerate launch --use_fsdp``): torch FSDP (``fully_shard``, each decoder layer a unit, then the whole
loss computation) keeps 1/N of the weights, gradients and optimizer state in each process (in CPU memory
with ``--cpu-offload``), gathers a unit's weights for its forward and backward, and reduce-scatters the
gradients, summed, after every micro-batch. Each process then runs the same number of micro-batches per step
(one with fewer runs one of the step's again with no weight). Checkpoints and the tuned model are gathered
into full tensors and written by process 0 in the one-process format, so a sharded run resumes with any N.

With ``--processes N`` the calling process (the CLI, or a job's worker) is process 0, with its
hooks; it starts N-1 helpers (``python -m tunery.tuning.helper``) that meet it through a
TCPStore on 127.0.0.1 whose port the OS picks. Under torchrun or ``accelerate launch`` the
launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) is used instead. (Without a
config, ``accelerate launch --num_processes N`` alone on a machine without GPUs starts one process, and tells
it nothing of N: pass ``--multi_gpu`` or ``--use_fsdp``, or use a MULTI_CPU config.)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import torch

from tunery import settings
from tunery.errors import ConfigError, JobError

JOIN_TIMEOUT = timedelta(minutes=2)
PAYLOAD_ENV = "TUNERY_PROCESS_PAYLOAD"
_helper: tuple[int, int, Any] | None = None  # (rank, count, store) in a helper process of --processes N


class Processes:
    """One process: what the loop asks of its process group, done trivially. ``Group`` shares the work."""

    rank = 0
    local_rank = 0
    count = 1
    stop_requested = False
    fsdp = False  # weights, gradients and optimizer state sharded across the processes (``shard``)
    offload = False  # and the shards kept in CPU memory

    def __init__(self) -> None:
        self.local_stop: Callable[[], bool] = lambda: False  # process 0's own stop request (the caller's hook)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, groups: Sequence[list[int]]) -> list[tuple[list[int], bool]]:
        """This process's micro-batches of a step, each with whether it counts. Sharded, every process runs as
        many as the busiest one: a process short of one runs the step's first again, not counted, because every
        forward and backward pass of FSDP meets the other processes."""
        mine = [(group, True) for group in groups[self.rank :: self.count]]
        if self.fsdp and groups:
            mine += [(groups[0], False)] * (-(-len(groups) // self.count) - len(mine))
        return mine

    def sync(self, params: Sequence[torch.Tensor], *stats: float) -> tuple[Any, ...]:
        """Sum gradients and the step's statistics over processes; returns the summed statistics."""
        return stats

    def stop(self, local: bool) -> bool:
        """Whether the run stops now: with several processes, the request process 0 shared at the last sync."""
        return local

    def shard(self, core: Any, loss: Callable[[Any, dict[str, torch.Tensor]], Any]) -> torch.nn.Module | None:
        """With ``fsdp``: shard ``core`` across the processes and return the module the loop's forward goes through
        (``Group.shard``); else None."""
        return None

    def full_state(self, model: Any) -> dict[str, torch.Tensor] | None:
        """Sharded: ``model``'s whole state dict, gathered (every process must call it); else None."""
        return None


EXIT_PROCESS_LOST = 75  # EX_TEMPFAIL: the job's worker exits with it, unended, so the scheduler retries it


class ProcessLost(SystemExit):
    """Another process of the run is gone mid-step. Not a job error: the process exits (status 75) without
    ending the job, and the scheduler's retry resumes it from the last checkpoint (with ``--resume`` by hand)."""

    def __init__(self, rank: int, cause: Exception) -> None:
        print(
            f"tunery: process {rank} lost a peer process of this run ({type(cause).__name__}: {cause}); "
            "resume from the last checkpoint",
            file=sys.stderr,
            flush=True,
        )
        super().__init__(EXIT_PROCESS_LOST)


class Group(Processes):
    """This process's place in a ``torch.distributed`` group of ``count`` processes."""

    def __init__(
        self, rank: int, count: int, local_rank: int, device: torch.device, fsdp: bool = False, offload: bool = False
    ) -> None:
        super().__init__()
        self.rank, self.count, self.local_rank, self.device = rank, count, local_rank, device
        self.fsdp, self.offload = fsdp, offload

    def sync(self, params: Sequence[torch.Tensor], *stats: float) -> tuple[Any, ...]:
        import torch.distributed as dist

        wanted = self.is_main and bool(self.local_stop())
        extra = torch.tensor([*stats, float(wanted)], dtype=torch.float64)
        try:
            if not self.fsdp:  # sharded, each backward pass reduce-scattered the gradients already
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
                flat = torch.cat([g.reshape(-1).float() for g in grads])
                dist.all_reduce(flat)
                offset = 0
                for p, g in zip(params, grads):
                    n = g.numel()
                    p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
                    offset += n
            dist.all_reduce(extra)
        except RuntimeError as exc:  # gloo/NCCL: a peer died or its connection broke
            raise ProcessLost(self.rank, exc) from exc
        *summed, stop = extra.tolist()
        self.stop_requested = self.stop_requested or stop > 0
        return tuple(type(mine)(total) for mine, total in zip(stats, summed))

    def stop(self, local: bool) -> bool:
        return self.stop_requested

    def shard(self, core: Any, loss: Callable[[Any, dict[str, torch.Tensor]], Any]) -> torch.nn.Module | None:
        """With ``fsdp``, shard ``core`` across the processes (FSDP full shard: each of its decoder layers a unit,
        the rest in one root unit with the loss) and return the module whose forward, ``loss(core, batch)``, the
        loop calls: the loop reaches into the decoder and the output layer directly, so the root unit must wrap
        that whole call. Gradients are summed, not averaged: the loss is already divided by the step's trained
        tokens. Without ``fsdp``: None."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

        if not self.fsdp:
            return None
        mesh = init_device_mesh(self.device.type, (self.count,))
        policy = CPUOffloadPolicy() if self.offload else OffloadPolicy()
        layers = set(getattr(core, "_no_split_modules", None) or ())
        units = [m for m in core.modules() if type(m).__name__ in layers]
        for unit in units:
            fully_shard(unit, mesh=mesh, offload_policy=policy)
        root = fully_shard(LossModule(core, loss), mesh=mesh, offload_policy=policy)
        for unit in [*units, root]:
            unit.set_gradient_divide_factor(1.0)
            unit.set_force_sum_reduction_for_comms(True)  # a plain SUM: gloo has no pre-multiplied sum
        return cast(torch.nn.Module, root)

    def full_state(self, model: Any) -> dict[str, torch.Tensor] | None:
        if not self.fsdp:
            return None
        gathered: dict[int, torch.Tensor] = {}  # tied weights stay one tensor, as save_pretrained expects
        state = model.state_dict(keep_vars=True)
        return {name: gathered.setdefault(id(t), full_tensor(t)) for name, t in state.items()}


class LossModule(torch.nn.Module):
    """``loss(core, batch)`` as a module's forward: the unit FSDP gathers the root's shards for."""

    def __init__(self, core: Any, loss: Callable[[Any, dict[str, torch.Tensor]], Any]) -> None:
        super().__init__()
        self.core, self.loss = core, loss

    def forward(
        self, batch: dict[str, torch.Tensor], loss: Callable[[Any, dict[str, torch.Tensor]], Any] | None = None
    ) -> Any:
        """``loss(core, batch)``: the run's loss, or another pass through the same weights (DPO's reference)."""
        return (loss or self.loss)(self.core, batch)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded tensor gathered whole on the CPU (a collective: every process calls it), else the tensor detached."""
    from torch.distributed.tensor import DTensor

    if isinstance(tensor, DTensor):
        return tensor.full_tensor().detach().cpu()
    return tensor.detach()


def like_param(param: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` (a whole tensor) as ``param`` holds it: this process's shard when ``param`` is sharded."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor) and not isinstance(value, DTensor) and value.shape == param.shape:
        local = value.to(device=param.device, dtype=param.dtype)
        return distribute_tensor(local, param.device_mesh, param.placements, src_data_rank=None)
    return value


KILL_ENV = settings.KILL_AFTER_STEP_ENV


def kill_point(step: int, rank: int) -> None:
    """Fault injection for tests: ``TUNERY_TEST_KILL_AFTER_STEP=STEP[:RANK]`` SIGKILLs process RANK (0 unless
    given) once its step STEP is done, that step's checkpoint included: a death at a known point of the run
    rather than one that races a timer."""
    wanted = settings.kill_after_step()
    if not wanted:
        return
    at, _, who = wanted.partition(":")
    if step == int(at) and rank == int(who or 0):
        os.kill(os.getpid(), signal.SIGKILL)


def launcher_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when a launcher (torchrun, accelerate launch) started this process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))


def backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def sharding(spec: Any) -> tuple[bool, bool]:
    """(fsdp, cpu offload) for ``spec``: its own settings, or ``accelerate launch --use_fsdp`` [``--fsdp_offload_params
    true``]. LoRA is never sharded (its frozen base has no gradients or optimizer state to split)."""
    accelerate = os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")
    offload = os.environ.get("FSDP_OFFLOAD_PARAMS", "").lower() in ("1", "true")
    if spec.fsdp and spec.is_lora:
        raise ConfigError("fsdp: sharding is for FULL tuning; a LoRA run (its base frozen) runs data parallel")
    fsdp = (spec.fsdp or accelerate) and not spec.is_lora
    offload = fsdp and (spec.cpu_offload or (accelerate and offload))
    if offload and (spec.device == "cpu" or (spec.device == "auto" and not torch.cuda.is_available())):
        raise ConfigError("cpuOffload: this run computes on the CPU, its shards are in CPU memory already")
    return fsdp, offload


@contextlib.contextmanager
def joined(
    rank: int,
    count: int,
    local_rank: int,
    device: torch.device,
    store: Any = None,
    shards: tuple[bool, bool] = (False, False),
) -> Iterator[Group]:
    """Join the process group (the launcher's environment, or ``store``) for the ``with`` block; ``shards``:
    (fsdp, cpu offload)."""
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    options: dict[str, Any] = {"backend": backend(device), "rank": rank, "world_size": count, "timeout": JOIN_TIMEOUT}
    if store is not None:
        options["store"] = store
    else:
        options["init_method"] = "env://"
    dist.init_process_group(**options)
    try:
        yield Group(rank, count, local_rank, device, *shards)
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


class Helpers:
    """The N-1 helper processes process 0 starts for ``--processes N``, and the store they meet at."""

    def __init__(self, spec: Any, run_dir: Path, resume: bool) -> None:
        import torch.distributed as dist

        self.count = spec.processes
        self.store = dist.TCPStore(
            "127.0.0.1", 0, self.count, is_master=True, timeout=JOIN_TIMEOUT, wait_for_workers=False
        )
        payload = json.dumps({"spec": spec.to_dict(), "run_dir": str(run_dir), "resume": resume})
        threads = max(1, (os.cpu_count() or 1) // self.count)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), PAYLOAD_ENV: payload}
        log = Path(run_dir) / "processes.log"
        self.log = log
        self.procs: list[subprocess.Popen] = []
        with log.open("ab") as out:
            for rank in range(1, self.count):
                cmd = [
                    sys.executable,
                    "-m",
                    "tunery.tuning.helper",
                    str(rank),
                    str(self.count),
                    str(self.store.port),
                ]
                self.procs.append(
                    subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                )

    def finish(self, ok: bool) -> None:
        """Wait for the helpers (they end with process 0); on failure stop them. Raises if one failed."""
        for proc in self.procs:
            if not ok:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60 if ok else 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        failed = [f"process {i + 1} exited with {p.returncode}" for i, p in enumerate(self.procs) if p.returncode]
        if ok and failed:
            raise JobError(f"{'; '.join(failed)} (log: {self.log})")


@contextlib.contextmanager
def processes(spec: Any, run_dir: Path, resume: bool, device_for: Any) -> Iterator[Processes]:
    """The process group a run computes in: one process, a launcher's group, or process 0 of ``--processes N``.

    ``device_for(local_rank)`` resolves this process's device.
    """
    shards = sharding(spec)
    spec.fsdp, spec.cpu_offload = shards  # recorded as run (``accelerate launch --use_fsdp`` sets it too)
    if _helper is not None:
        rank, count, store = _helper
        with joined(rank, count, rank, device_for(rank), store, shards) as group:
            yield group
        return
    launched = launcher_env()
    if launched is not None:
        rank, count, local = launched
        if count != spec.processes and spec.processes != 1:
            raise JobError(f"processCount {spec.processes} but the launcher started {count} processes")
        with joined(rank, count, local, device_for(local), shards=shards) as group:
            yield group
        return
    if spec.processes == 1:
        yield Processes()
        return
    if PAYLOAD_ENV in os.environ:
        raise JobError("a helper process of --processes N may not start processes of its own")
    helpers = Helpers(spec, run_dir, resume)
    ok = False
    try:
        with joined(0, spec.processes, 0, device_for(0), helpers.store, shards) as group:
            yield group
        ok = True
    finally:
        helpers.finish(ok)


def watch_parent(every: float = 1.0) -> None:
    """End this helper at once if process 0 (its parent) is gone, rather than wait for a collective's timeout."""
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="tunery-watch-parent", daemon=True).start()


def join_as_helper(rank: int, count: int, port: int) -> dict[str, Any]:
    """In a helper process of ``--processes N`` (``tunery.tuning.helper``): end with process 0, meet it at its store
    on ``port`` (``processes`` then joins the group as ``rank``), and return what it was started with: the spec (as
    a dict), the run directory and whether it resumes."""
    import torch.distributed as dist

    global _helper
    watch_parent()
    payload = json.loads(os.environ.pop(PAYLOAD_ENV))
    _helper = (rank, count, dist.TCPStore("127.0.0.1", port, count, is_master=False, timeout=JOIN_TIMEOUT))
    return payload
