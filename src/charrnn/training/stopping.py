"""Why fit() stops before its last epoch, and what it says then: Ctrl-C, SIGTERM and SIGHUP (finish the step,
save a checkpoint, say how to resume), request_stop(), --max-steps, --max-minutes and --patience."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from charrnn.training import distributed
from charrnn.training.recipe import BUDGET_USED

if TYPE_CHECKING:
    from charrnn.training.trainer import Trainer


# Closing the terminal sends SIGHUP; Windows has none.
SIGHUP = getattr(signal, "SIGHUP", None)


class StopRequest:
    """Whether fit() should stop after the current step, and the signal that asked for it, if one did.

    Ctrl-C, SIGTERM (kill, systemd, a job scheduler) and SIGHUP (the terminal closed) all ask, and the
    command exits 128 + the signal (130, 143, 129); a second one stops at once: Ctrl-C as
    KeyboardInterrupt, the others by their default action."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._terminals: list[int] = []  # stdout and stderr, where they are a terminal

    def request(self) -> None:
        self.requested = True

    @contextmanager
    def handling(self) -> Iterator[None]:
        """Route SIGINT, SIGTERM and SIGHUP here for the duration, then give them back to their previous
        handlers. SIGHUP stays ignored where it was (nohup). Python lets only the main thread set
        handlers; elsewhere only `request()` stops."""
        handled = [signal.SIGINT, signal.SIGTERM]
        if SIGHUP is not None and signal.getsignal(SIGHUP) is not signal.SIG_IGN:
            handled.append(SIGHUP)
        if threading.current_thread() is not threading.main_thread():
            handled = []
        self._terminals = [fd for fd in (1, 2) if _is_terminal(fd)]
        previous = {signum: signal.signal(signum, self._on_signal) for signum in handled}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum, frame) -> None:
        if self.requested:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if signum == SIGHUP:
            self._leave_terminal()
        # Only flags here: writing from a handler can land inside the progress bar's own write (a reentrant
        # write RuntimeError); the loop says it once it sees the flag.
        self.requested, self.signum = True, signum

    def _leave_terminal(self) -> None:
        """After a hang-up, writing to the terminal fails (EIO) and would end the run before its checkpoint:
        what was going to it goes nowhere instead. Output to a file or a pipe is kept."""
        for fd in self._terminals:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)

    def notice(self) -> str | None:
        """What to say when a signal stopped the loop (None when `request()` did)."""
        if self.signum is None:
            return None
        name = "Ctrl-C" if self.signum == signal.SIGINT else signal.Signals(self.signum).name
        return (
            f"\n{name}: stopping after this step and saving a checkpoint ({name} again stops at once, without saving)"
        )


def nothing_to_do(trainer: Trainer) -> str | None:
    """Why fit() would train nothing, the run being past its epochs or --max-steps already; else None."""
    cfg = trainer.config
    if trainer.epoch >= cfg.epochs:
        return (
            f"the run already finished {trainer.epoch} epoch(s); pass --epochs N (N > {trainer.epoch}) to train longer"
        )
    if cfg.max_steps and trainer.global_step >= cfg.max_steps:
        return (
            f"the run is already at step {trainer.global_step} (--max-steps {cfg.max_steps}); "
            f"pass --max-steps N (N > {trainer.global_step}, or 0 for no limit) to train longer"
        )
    return None


def after_step(trainer: Trainer, tick: Callable[[], float]) -> str:
    """After a step: "finished" to go on, else the rule that stops the run there; `tick` brings the trainer's
    elapsed seconds up to now and returns them. Every rank takes the same decision at the same step: each
    check that may differ between ranks is shared, in the same order on every rank."""
    cfg = trainer.config
    if distributed.any_rank(trainer.stop.requested):
        return "interrupted"
    if cfg.max_steps and trainer.global_step >= cfg.max_steps:
        return "max_steps"
    if cfg.max_minutes and distributed.any_rank(tick() >= 60 * cfg.max_minutes):
        return "max_minutes"
    return "finished"


def steps_for_budget(trainer: Trainer) -> int | None:
    """With fit_budget and max_minutes: the total steps the budget holds at the run's speed so far
    (validation and checkpoints included), when that differs from max_steps by over 1%; else None.
    A planned step time can be off by 10-20% (other processes, a slower first epoch): this keeps the
    learning-rate schedule ending as the budget does, whatever the machine did."""
    cfg = trainer.config
    if not (cfg.fit_budget and cfg.max_minutes and trainer.global_step and trainer.elapsed):
        return None
    per_step = trainer.elapsed / trainer.global_step
    left = BUDGET_USED * 60 * cfg.max_minutes - trainer.elapsed
    total = trainer.global_step + max(1, int(left / per_step))
    return total if abs(total - cfg.max_steps) > 0.01 * max(1, cfg.max_steps) else None


def stopped_line(status: str, trainer: Trainer) -> str:
    """What fit() says last when `status` (a FitResult's, other than "finished") ended the run."""
    cfg = trainer.config
    if status == "interrupted":
        return (
            f"interrupted at epoch {trainer.epoch + 1}, step {trainer.step_in_epoch}/{len(trainer.batches)}; "
            f"checkpoint saved. Resume with: charrnn train --resume {trainer.run_dir}"
        )
    if status == "max_steps":
        return f"stopped at --max-steps {cfg.max_steps}"
    if status == "max_minutes":
        return f"stopped after --max-minutes {cfg.max_minutes:g} ({trainer.elapsed / 60:.1f} min)"
    return (
        f"validation loss has not improved for {trainer.bad_epochs} epoch(s): "
        f"stopping early (--patience {cfg.patience})"
    )


def _is_terminal(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False
