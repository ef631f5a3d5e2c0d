"""Training callbacks and the :class:`History` returned by ``Trainer.fit``.

A callback overrides any of ``on_train_begin(trainer)``, ``on_epoch_begin(trainer, epoch)``,
``on_batch_begin(trainer, batch)``, ``on_batch_end(trainer, batch, logs)``,
``on_epoch_end(trainer, epoch, logs)`` and ``on_train_end(trainer, logs)``. ``epoch`` is the
0-based global epoch index (``trainer.epoch`` counts completed epochs and is already
incremented when ``on_epoch_end`` runs); ``logs`` is a dict of floats (``loss``,
``accuracy``, ``val_loss``, ``val_accuracy``, ``lr``, ``seconds``, ``images_per_sec``).
Setting ``trainer.stop_training = True`` ends ``fit`` after the current epoch. After a
Ctrl-C, ``fit`` stops after the current step: a partial epoch gets no ``on_epoch_end``, and
``on_train_end`` still runs (see ``Trainer.interrupted``).

A callback whose ``rank_zero_only`` attribute is True (checkpoints, loggers) runs only on
rank 0 of a distributed Trainer; the others run on every rank (with the same logs).
"""

import csv
import json
import math
import os
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, TextIO, Union

import numpy as np

from ._typing import Array, Logs
from .optim import Schedule

if TYPE_CHECKING:
    from .trainer import Trainer

#: A metric value in the logs: a float, an int, or None (e.g. no validation data).
Metric = Union[float, int, None]
PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["Callback", "History", "EarlyStopping", "ModelCheckpoint", "CSVLogger",
           "JSONLogger", "LearningRateScheduler"]


class Callback:
    """Base class; every hook does nothing."""

    #: Run only on rank 0 of a distributed Trainer (set True for side effects: files).
    rank_zero_only = False

    def on_train_begin(self, trainer: "Trainer") -> None:
        """Called once at the start of ``fit``."""

    def on_epoch_begin(self, trainer: "Trainer", epoch: int) -> None:
        """Called before each epoch (``epoch``: 0-based global index)."""

    def on_batch_begin(self, trainer: "Trainer", batch: int) -> None:
        """Called before each training batch (``batch``: index in the epoch)."""

    def on_batch_end(self, trainer: "Trainer", batch: int, logs: Logs) -> None:
        """Called after each training batch with its ``loss`` (and ``accuracy``)."""

    def on_epoch_end(self, trainer: "Trainer", epoch: int, logs: Logs) -> None:
        """Called after each epoch with the epoch's metrics."""

    def on_train_end(self, trainer: "Trainer", logs: Logs) -> None:
        """Called once at the end of ``fit`` with the last epoch's metrics."""


class History:
    """Per-epoch metrics of one ``fit`` call.

    Attributes
    ----------
    epoch : list of int
        Global 1-based epoch numbers.
    history : dict of str -> list of float
        ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy`` (with validation data),
        ``lr``, ``seconds`` (wall time of the epoch, validation included) and
        ``images_per_sec`` (training throughput).
    """

    def __init__(self) -> None:
        self.epoch: List[int] = []
        self.history: Dict[str, List[Metric]] = {}

    def append(self, epoch: int, logs: Logs) -> None:
        """Record the metrics of one epoch (1-based ``epoch``)."""
        self.epoch.append(int(epoch))
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def __getitem__(self, key: str) -> List[Metric]:
        return self.history[key]

    def __contains__(self, key: object) -> bool:
        return key in self.history

    def __len__(self) -> int:
        return len(self.epoch)

    def to_dict(self) -> Dict[str, List[Metric]]:
        """``{"epoch": [...], metric: [...]}``: plain lists, ready for JSON."""
        epochs: List[Metric] = list(self.epoch)
        return {"epoch": epochs, **{k: list(v) for k, v in self.history.items()}}

    def __repr__(self) -> str:
        keys = ", ".join(self.history)
        return f"History({len(self.epoch)} epochs: {keys})"

    def plot(self, path: PathLike, title: Optional[str] = None) -> bool:
        """Save loss and accuracy curves as a PNG. Returns False (and writes nothing) when
        matplotlib is not installed, True otherwise."""
        try:
            import matplotlib
            matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt
        except ImportError:
            return False
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, metric in zip(axes, ("loss", "accuracy")):
            for key, style in ((metric, "o-"), ("val_" + metric, "s--")):
                values = self.history.get(key)
                if values and any(v is not None for v in values):
                    ax.plot(self.epoch, [np.nan if v is None else v for v in values], style,
                            label=key)
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric)
            ax.grid(True, alpha=0.3)
            ax.legend()
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(os.fspath(path), dpi=100)
        plt.close(fig)
        return True


def _mode(mode: str, monitor: str, where: str) -> str:
    if mode == "auto":
        return "max" if ("acc" in monitor or "images" in monitor) else "min"
    if mode not in ("min", "max"):
        raise ValueError(f"{where}: mode must be 'auto', 'min' or 'max', got {mode!r}")
    return mode


def _metric(logs: Logs, monitor: str, where: str) -> float:
    value = logs.get(monitor)
    if value is None:
        available = ", ".join(k for k, v in logs.items() if v is not None)
        raise ValueError(f"{where}: metric {monitor!r} is not in the epoch logs (available: "
                         f"{available}); pass validation_data to fit() or change monitor")
    return float(value)


class EarlyStopping(Callback):
    """Stop training when ``monitor`` has not improved by more than ``min_delta`` for
    ``patience`` epochs.

    Parameters
    ----------
    monitor : str
        A key of the epoch logs (default ``"val_loss"``).
    patience : int
    min_delta : float
    mode : 'auto', 'min' or 'max'
        'auto': maximise metrics whose name contains "acc", minimise the others.
    restore_best_weights : bool
        At the end of training, put back the weights of the best epoch.

    Attributes
    ----------
    stopped_epoch : int or None
        1-based epoch after which training stopped (None if it ran to the end).
    best : float
    best_epoch : int
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 3, min_delta: float = 0.0,
                 mode: str = "auto", restore_best_weights: bool = False,
                 verbose: int = 0) -> None:
        self.monitor = monitor
        self.patience = int(patience)
        self.min_delta = abs(float(min_delta))
        self.mode = _mode(mode, monitor, "EarlyStopping")
        self.restore_best_weights = bool(restore_best_weights)
        self.verbose = verbose
        self._reset()

    def _reset(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch: Optional[int] = None
        self.wait = 0
        self.stopped_epoch: Optional[int] = None
        self._best_state: Optional[Dict[str, Array]] = None

    def _improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_train_begin(self, trainer: "Trainer") -> None:
        self._reset()

    def on_epoch_end(self, trainer: "Trainer", epoch: int, logs: Logs) -> None:
        value = _metric(logs, self.monitor, "EarlyStopping")
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch + 1, 0
            if self.restore_best_weights:
                self._best_state = trainer.model.state_dict()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch + 1
            trainer.stop_training = True
            if self.verbose:
                print(f"EarlyStopping: {self.monitor} did not improve for {self.wait} epochs "
                      f"(best {self.best:.6g} at epoch {self.best_epoch}); stopping")

    def on_train_end(self, trainer: "Trainer", logs: Logs) -> None:
        if self.restore_best_weights and self._best_state is not None:
            trainer.model.load_state_dict(self._best_state)


class ModelCheckpoint(Callback):
    """Save a checkpoint at the end of epochs (atomically: temporary file + ``os.replace``).

    Only complete epochs are saved: after a Ctrl-C in the middle of an epoch the file keeps
    the last complete one, and a Ctrl-C during a save lets the save finish.

    Parameters
    ----------
    path : str
        File name, may contain ``{epoch}`` and log keys, e.g.
        ``"ckpt-{epoch:02d}-{val_loss:.3f}.npz"``.
    monitor, mode : str
        Used with ``save_best_only``.
    save_best_only : bool
        Only write when ``monitor`` improved.
    save_optimizer : bool
        Write a full training checkpoint (optimiser and trainer state, so that
        ``Trainer.from_checkpoint`` resumes exactly); otherwise only the model.

    Attributes
    ----------
    last_path : str or None
        The file written last.
    """

    rank_zero_only = True

    def __init__(self, path: PathLike, monitor: str = "val_loss", save_best_only: bool = False,
                 mode: str = "auto", save_optimizer: bool = True, verbose: int = 0) -> None:
        self.path = os.fspath(path)
        self.monitor = monitor
        self.save_best_only = bool(save_best_only)
        self.mode = _mode(mode, monitor, "ModelCheckpoint")
        self.save_optimizer = bool(save_optimizer)
        self.verbose = verbose
        self.best: Optional[float] = None
        self.last_path: Optional[str] = None

    def on_train_begin(self, trainer: "Trainer") -> None:
        self.best = None

    def on_epoch_end(self, trainer: "Trainer", epoch: int, logs: Logs) -> None:
        if self.save_best_only:
            value = _metric(logs, self.monitor, "ModelCheckpoint")
            better = (self.best is None or (value < self.best if self.mode == "min"
                                            else value > self.best))
            if not better:
                return
            self.best = value
        fields = {k: v for k, v in logs.items() if v is not None}
        path = self.path.format(epoch=epoch + 1, **fields)
        if self.save_optimizer:
            trainer.save_checkpoint(path)
        else:
            trainer.model.save(path)
        self.last_path = path
        if self.verbose:
            print(f"ModelCheckpoint: saved {path}")


class _FileLogger(Callback):
    rank_zero_only = True

    def __init__(self, path: PathLike, append: bool = False) -> None:
        self.path = os.fspath(path)
        self.append = bool(append)
        self._file: Optional[TextIO] = None
        self._started = False

    def _open_file(self) -> TextIO:
        if self._file is None:
            raise RuntimeError(f"{type(self).__name__}: on_epoch_end before on_train_begin")
        return self._file

    def on_train_begin(self, trainer: "Trainer") -> None:
        self._file = open(self.path, "a" if self.append else "w", newline="")
        self._started = self.append and self._file.tell() > 0

    def on_train_end(self, trainer: "Trainer", logs: Logs) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class CSVLogger(_FileLogger):
    """Append one CSV row per epoch (``epoch`` then the log keys) to ``path``; a header is
    written first unless appending to a non-empty file."""

    def __init__(self, path: PathLike, append: bool = False, separator: str = ",") -> None:
        super().__init__(path, append)
        self.separator = separator
        self._keys: Optional[List[str]] = None

    def on_epoch_end(self, trainer: "Trainer", epoch: int, logs: Logs) -> None:
        if self._keys is None:
            self._keys = list(logs)
        file = self._open_file()
        writer = csv.writer(file, delimiter=self.separator)
        if not self._started:
            writer.writerow(["epoch"] + self._keys)
            self._started = True
        writer.writerow([epoch + 1] + ["" if logs.get(k) is None else logs.get(k)
                                       for k in self._keys])
        file.flush()


class JSONLogger(_FileLogger):
    """Append one JSON object per epoch (JSON lines: ``{"epoch": 1, "loss": ...}``) to
    ``path``."""

    def on_epoch_end(self, trainer: "Trainer", epoch: int, logs: Logs) -> None:
        file = self._open_file()
        file.write(json.dumps({"epoch": epoch + 1, **logs}) + "\n")
        file.flush()


class LearningRateScheduler(Callback):
    """Set ``optimizer.lr = schedule(t)`` before each epoch (``per="epoch"``, ``t`` = global
    0-based epoch index) or each batch (``per="batch"``, ``t`` = global step count).

    ``schedule`` is a :class:`cnncore.optim.Schedule` (StepLR, CosineLR, WarmupLR, ...) or any
    callable ``t -> lr``. The schedule depends only on the counters, which checkpoints store,
    so a resumed run gets the same learning rates.
    """

    def __init__(self, schedule: Callable[[int], float], per: str = "epoch",
                 verbose: int = 0) -> None:
        if not callable(schedule):
            raise TypeError(f"LearningRateScheduler: schedule must be callable, got {schedule!r}")
        if per not in ("epoch", "batch"):
            raise ValueError(f"LearningRateScheduler: per must be 'epoch' or 'batch', got {per!r}")
        self.schedule, self.per, self.verbose = schedule, per, verbose

    def _set(self, trainer: "Trainer", t: int) -> None:
        lr = float(self.schedule(t))
        if not (lr >= 0 and math.isfinite(lr)):
            raise ValueError(f"LearningRateScheduler: schedule({t}) = {lr} is not a valid "
                             "learning rate")
        trainer.optimizer.lr = lr

    def on_epoch_begin(self, trainer: "Trainer", epoch: int) -> None:
        if self.per == "epoch":
            self._set(trainer, epoch)
            if self.verbose:
                print(f"LearningRateScheduler: epoch {epoch + 1}, lr = {trainer.optimizer.lr:.6g}")

    def on_batch_begin(self, trainer: "Trainer", batch: int) -> None:
        if self.per == "batch":
            self._set(trainer, trainer.global_step)

    def __repr__(self) -> str:
        s = self.schedule if isinstance(self.schedule, Schedule) else "<callable>"
        return f"LearningRateScheduler({s}, per={self.per!r})"
