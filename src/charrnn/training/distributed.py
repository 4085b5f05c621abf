"""More than one process: PyTorch DistributedDataParallel, and everything torch.distributed, in one place.

torchrun (or `charrnn train --nproc N`, which runs it on this machine) starts N copies of `charrnn train`
with RANK / WORLD_SIZE / LOCAL_RANK set. Each joins the process group here (gloo on CPU, NCCL on CUDA),
wraps the model in DDP, and trains on rows rank*B/N:(rank+1)*B/N of the same global batch of B rows:
DDP averages the gradients, so N processes follow the same recipe (and the same data order) as one.
Only rank 0 writes the run directory. With one process every helper here is a no-op.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from charrnn.errors import CharRNNError

TIMEOUT_ENV = "CHARRNN_DIST_TIMEOUT"  # seconds a collective may wait for a silent rank (default 600)
PEER_LOST_EXIT = 3  # exit code of a rank that stopped only because another rank died
# What a rank exits with after a signal stopped it and rank 0 saved: 128 + SIGINT, SIGTERM, SIGHUP.
STOPPED_EXITS = (130, 143, 129)
FAIL_ENV = "CHARRNN_FAIL_RANK"  # test hook, "RANK:STEP": that rank crashes before that step

_device = torch.device("cpu")  # where this rank's collectives run (NCCL needs CUDA tensors)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Rank 0: the process that writes the run directory, progress and metrics."""
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (once); returns the device this rank trains on."""
    global _device
    if world_size() == 1:
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise CharRNNError(
                f"process {local} on this machine has no GPU of its own ({torch.cuda.device_count()} GPU(s)); "
                "run at most one process per GPU (--nproc / --nproc-per-node)"
            )
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        # A rank that dies is noticed by torchrun, which stops the others; the timeout is the backstop
        # for a rank that hangs, so no collective waits forever.
        seconds = float(os.environ.get(TIMEOUT_ENV, "600"))
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(seconds=seconds)
        )
    _device = device
    return device


def shard(batch_size: int) -> slice:
    """This rank's rows of a global batch."""
    n = world_size()
    if n == 1:
        return slice(None)
    if batch_size % n:
        raise CharRNNError(f"--batch-size {batch_size} does not divide among {n} processes; use a multiple of {n}")
    per = batch_size // n
    return slice(rank() * per, (rank() + 1) * per)


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The module to call for training steps: DDP around `model` when there are several processes."""
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def mean(value: torch.Tensor) -> float:
    """The mean over ranks of a scalar (each rank's loss -> the global batch's loss)."""
    if world_size() == 1:
        return value.item()
    total = value.detach().float().reshape(1).to(_device)
    dist.all_reduce(total)
    return total.item() / world_size()


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any: ranks stop together (Ctrl-C, time limits)."""
    if world_size() == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=_device)
    dist.all_reduce(value)
    return value.item() > 0


def from_main(value):
    """Rank 0's `value` on every rank (a picklable object; evaluation results, decisions)."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=_device if _device.type == "cuda" else None)
    return box[0]


def check_same_text(sha256: str, vocab_size: int) -> None:
    """Every rank must train on the same text: with several machines each prepares its own copy."""
    if world_size() == 1:
        return
    seen: list = [None] * world_size()
    dist.all_gather_object(seen, (sha256, vocab_size))
    if any(item != seen[0] for item in seen):
        odd = next(r for r, item in enumerate(seen) if item != seen[0])
        raise CharRNNError(
            f"rank {odd} read a different text than rank 0 (SHA-256 {seen[odd][0][:12]}… vs {seen[0][0][:12]}…, "
            f"{seen[odd][1]} vs {seen[0][1]} characters of vocabulary); every machine needs the same text at the same path"
        )


def barrier() -> None:
    if world_size() > 1 and dist.is_initialized():
        dist.barrier()


@contextmanager
def peer_errors() -> Iterator[None]:
    """A collective that fails because another rank died becomes one line here, not a traceback: the
    rank that failed first says why."""
    try:
        yield
    except RuntimeError as exc:
        text = str(exc)
        if world_size() == 1 or not (
            isinstance(exc, dist.DistError) or "gloo" in text or "NCCL" in text or "Connection closed by peer" in text
        ):
            raise
        first = text.strip().splitlines()[0][:160] if text.strip() else type(exc).__name__
        sys.stderr.write(
            f"charrnn: error: rank {rank()} lost contact with the other processes ({first}); "
            "the rank that failed first says why\n"
        )
        sys.stderr.flush()
        # Leave now: a normal exit destroys gloo's connection threads mid-use and aborts ("terminate
        # called without an active exception"), which torchrun would then report as this rank's failure.
        os._exit(PEER_LOST_EXIT)


def fault_hook(step: int) -> None:
    """Crash on purpose when CHARRNN_FAIL_RANK=RANK:STEP names this rank and step (tests the failure path)."""
    spec = os.environ.get(FAIL_ENV)
    if spec and spec == f"{rank()}:{step}":
        raise RuntimeError(f"injected failure on rank {rank()} at step {step} ({FAIL_ENV}={spec})")


def launch(nproc: int, argv: list[str]) -> int:
    """`charrnn train --nproc N ...`: torchrun on this machine running N ranks of `charrnn ARGV`."""
    if nproc < 1:
        raise CharRNNError(f"--nproc must be at least 1; got {nproc}")
    if world_size() > 1:
        raise CharRNNError("--nproc launches torchrun itself; under torchrun use its --nproc-per-node instead")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # torchrun logs a multi-line report per failed rank; the rank's own message and one line here say it.
    # Its loggers set their own levels when created, so each one is quietened.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    # Share the cores: N ranks x (cores / N) threads, unless the user chose.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", "charrnn"])
    args.training_script_args = list(argv)  # set, not parsed: torchrun's parser would take --run for --run-path
    try:
        run(args)
    except SignalException as exc:
        # torchrun passed the signal on to the ranks: each stops after its step, rank 0 saves and says how to
        # resume. Exit as one process would (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP).
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        return _failed(exc, nproc)
    return 0


def _failed(exc, nproc: int) -> int:
    """The exit code when ranks exited non-zero, and one line naming the rank that failed first unless
    the ranks only stopped on a signal sent to them (rank 0 saved and said how to resume)."""
    failures = sorted(exc.failures.items())
    stopped = [item for item in failures if item[1].exitcode in STOPPED_EXITS]
    # A rank exits with a stop code only after rank 0's checkpoint (a barrier): torchrun then ends the
    # ranks still exiting with a signal of its own (a negative code), which loses nothing.
    if stopped and all(
        code in STOPPED_EXITS or code == PEER_LOST_EXIT or code < 0 for code in (f.exitcode for _, f in failures)
    ):
        return stopped[0][1].exitcode
    # Name the rank that failed on its own: ranks that merely lost it exit with PEER_LOST_EXIT, and
    # torchrun often sees them all fail in the same poll, where its "first" is just the lowest rank.
    causes = [item for item in failures if item[1].exitcode != PEER_LOST_EXIT] or failures
    failed_rank, failure = min(causes, key=lambda item: (getattr(item[1], "timestamp", 0), item[0]))
    print(
        f"charrnn: error: training failed on rank {failed_rank} of {nproc} (exit code {failure.exitcode}; "
        "its message is above); the other ranks were stopped",
        file=sys.stderr,
    )
    return 1


def without_nproc(argv: list[str]) -> list[str]:
    """`argv` minus --nproc N / --nproc=N: what each launched rank runs."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out
