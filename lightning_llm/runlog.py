"""A run's metrics.csv that covers the whole run, resumes included.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when it opens a log directory that is not empty, so a
run resumed after Ctrl-C kept only the rows logged after the resume (steps 19-59 of a 59-step run).
``RunCSVLogger`` keeps the file, and ``MetricsHistory`` drops, at the start of training, the rows the
resumed run will log again (those at or after the step it resumes from; all of them for a new run).
"""

from __future__ import annotations

import csv

import lightning as L
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _KeepingWriter(ExperimentWriter):
    """Appends to an existing metrics.csv instead of deleting it; its header seeds the known columns."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))

    def drop_rows_from(self, step: int) -> int:
        """Remove the rows logged at ``step`` or later; returns how many rows were kept."""
        if not self._fs.isfile(self.metrics_file_path):
            return 0
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            rows = list(csv.DictReader(f))
        kept = [r for r in rows if r.get("step", "") != "" and int(float(r["step"])) < step]
        if kept:
            with self._fs.open(self.metrics_file_path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
        else:
            self._fs.rm_file(self.metrics_file_path)
            self.metrics_keys = []
        return len(kept)


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives a resume (see the module docstring)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _KeepingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment


class MetricsHistory(L.Callback):
    """At the start of training, trims a ``RunCSVLogger``'s file to the rows before the current step."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, RunCSVLogger) and trainer.is_global_zero:
                logger.experiment.drop_rows_from(trainer.global_step)
