"""What a run shows while it trains: a progress bar on a terminal; in a log file or with ``--quiet`` one
plain line per evaluation; and once, after the first steps, the estimated duration (made again when the
estimator changes phase, e.g. the hybrid's switch from RGE to CGE, whose steps cost differently)."""
from __future__ import annotations

import sys
import time
from typing import Callable

from tqdm import tqdm

ESTIMATE_AFTER_S = 2.0      # the duration estimate comes once this much training time has passed ...
ESTIMATE_AFTER_STEPS = 3    # ... and at least this many steps


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """Progress of steps ``initial``..``total``. ``bar``: a tqdm bar when stderr is a terminal (else lines
    through ``log``, which is also where the estimate and warnings go)."""

    def __init__(self, label: str, total: int, initial: int, bar: bool, log: Callable[[str], None]):
        self.label, self.total, self.log = label, total, log
        self.bar = (tqdm(total=total, initial=initial, mininterval=1.0, unit="step", dynamic_ncols=True)
                    if bar and sys.stderr.isatty() else None)
        self.first, self.started, self.training_s, self.estimated = initial, time.perf_counter(), 0.0, False
        self.phase: str | None = None
        self.phase_started = self.started

    def step(self, step: int, seconds: float, phase: str | None = None) -> None:
        """One training step done (``seconds`` of it, evaluations excluded) in the estimator's ``phase``; the
        estimate once enough passed in this phase (a new phase starts the timing again)."""
        if phase != self.phase:
            if self.phase is not None:
                self.first, self.training_s, self.estimated = step - 1, 0.0, False
                self.phase_started = time.perf_counter() - seconds
            self.phase = phase
        self.training_s += seconds
        if self.bar is not None:
            self.bar.update(1)
        done = step - self.first
        if not self.estimated and done >= ESTIMATE_AFTER_STEPS and self.training_s >= ESTIMATE_AFTER_S:
            self.estimated = True
            per = self.training_s / done
            during = f" ({self.phase.upper()})" if self.phase else ""
            self.write(f"{self.label}: {per:.3g} s per step{during}: about {_duration(per * (self.total - step))} for the "
                       f"remaining {self.total - step:,} steps (plus evaluations)")

    def record(self, step: int, shown: dict) -> None:
        """An evaluation after ``step`` steps: the bar's postfix, or one line."""
        if self.bar is not None:
            self.bar.set_postfix(**shown, refresh=False)
            return
        elapsed = time.perf_counter() - self.started
        fields = ", ".join(f"{k} {v}" for k, v in shown.items())
        left = ""
        if step > self.first and step < self.total:
            per = (time.perf_counter() - self.phase_started) / (step - self.first)    # this phase's pace
            left = f", ~{_duration(per * (self.total - step))} left"
        self.log(f"{self.label}: step {step:,}/{self.total:,} ({100 * step / max(1, self.total):.0f} %): {fields}; "
                 f"{_duration(elapsed)}{left}")

    def write(self, line: str) -> None:
        (self.bar.write if self.bar is not None else self.log)(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
