"""The :class:`Trainer`: mini-batch training loop, evaluation, prediction, checkpoints.

Inputs must already be in the model's layout and dtype family: convert images first, e.g.
``x = x_uint8.astype(np.float32)[:, None] / 255`` for ``(N, H, W)`` uint8 images (a floating
array of the other precision is converted batch by batch; integer images are refused).

Determinism: with the same initial weights, the same ``seed`` and the same thread count a
run gives bit-identical weights; a run resumed from a checkpoint (``save_checkpoint`` /
``from_checkpoint``) continues exactly as if it had not stopped.

Data parallelism: ``Trainer(..., distributed="mpi")`` under ``mpiexec -n R`` (see
:mod:`cnncore.distributed`): every rank calls ``fit`` / ``evaluate`` / ``predict`` with the
same arrays, computes its contiguous slice of each global batch and sums the gradients
over the ranks (in rank order) before each step; rank 0 alone prints, logs and saves.

Ctrl-C during ``fit`` stops after the current step (see :class:`Trainer`, ``interrupted``);
NaN or infinite losses and gradients raise :class:`TrainingDiverged` before the step that
would have spoilt the weights (``check_gradients``).
"""

import contextlib
import math
import sys
import time
import warnings

import numpy as np

from . import _gradients, _interrupt
from . import memory as _memory
from . import serialization
from .callbacks import Callback, History
from .layers.norm import generator_from_state, generator_state
from .losses import Loss, loss_from_config
from .optim import Optimizer, optimizer_from_config

__all__ = ["Trainer", "TrainingDiverged"]


class TrainingDiverged(FloatingPointError, RuntimeError):
    """The loss or a gradient became NaN or infinite; the message names the epoch, the batch
    and the step (and, for a gradient, the parameters and their layers)."""


def _tqdm():
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


def _fmt_time(seconds):
    seconds = int(round(seconds))
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class _Progress:
    """Per-epoch progress: tqdm when installed, else a plain line rewritten with ``\\r``."""

    def __init__(self, total, desc, enabled, file=None):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.file = file or sys.stderr
        self.done = 0
        self.start = time.perf_counter()
        self._last = 0.0
        self._bar = None
        if enabled:
            tqdm = _tqdm()
            if tqdm is not None:
                self._bar = tqdm(total=total, desc=desc, unit="img", unit_scale=True,
                                 leave=False, file=self.file, dynamic_ncols=True)

    def update(self, n, loss, acc):
        self.done += n
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._bar is not None:
            self._bar.update(n)
            if now - self._last > 0.2 or self.done >= self.total:
                post = {"loss": f"{loss:.4f}"}
                if acc is not None:
                    post["acc"] = f"{acc:.4f}"
                self._bar.set_postfix(post, refresh=False)
                self._last = now
            return
        if now - self._last < 0.5 and self.done < self.total:
            return
        self._last = now
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        acc_s = "" if acc is None else f"  acc {acc:.4f}"
        self.file.write(f"\r{self.desc}  {self.done}/{self.total}  loss {loss:.4f}{acc_s}  "
                        f"{rate:.0f} img/s  ETA {_fmt_time(eta)}   ")
        self.file.flush()

    def close(self):
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            self.file.write("\r" + " " * 100 + "\r")
            self.file.flush()


class Trainer:
    """Train a model with a loss and an optimiser.

    Parameters
    ----------
    model : Layer
    loss : Loss
        E.g. :class:`cnncore.losses.SoftmaxCrossEntropy`.
    optimizer : Optimizer
        Built on ``model.parameters()``.
    seed : int, optional
        Seed of the shuffling generator (``fit(seed=...)`` reseeds it).
    memory_pool : bool or cnncore.memory_pool
        ``fit``, ``evaluate`` and ``predict`` run inside a :class:`cnncore.memory_pool`
        (True, the default: freed arrays are reused by the next step instead of being
        returned to the operating system and faulted in again), inside the one given (e.g.
        ``cnncore.memory_pool(max_bytes=...)``), or with NumPy's own allocator (False).
        Results are the same either way.
    distributed : None, "mpi" or an mpi4py communicator
        Data-parallel training over the ranks of ``MPI.COMM_WORLD`` ("mpi") or of the
        communicator given (needs ``pip install "cnncore[mpi]"``). ``batch_size`` is then
        the global batch; rank 0's weights, optimiser and trainer state are broadcast at the
        start of ``fit``; ``evaluate`` and ``predict`` shard the data; only rank 0 shows
        progress, prints, runs ``rank_zero_only`` callbacks (checkpoints, loggers) and
        writes checkpoints. An uncaught exception on one rank aborts every rank.
    sync_batchnorm : bool
        With ``distributed``: BatchNorm layers normalise with the statistics of the global
        batch (as one process would). Default False: per-rank statistics (PyTorch DDP's
        default); running statistics are taken from rank 0 after every epoch.
    check_gradients : {"raise", "warn", "off", None}
        After backward (and, with ``distributed``, after the gradients are summed over the
        ranks, so every rank decides alike), check that every gradient is finite. "raise"
        (the default): raise :class:`TrainingDiverged` naming the parameters and their
        layers, the epoch, the batch and the step, *before* the optimiser step (the weights
        stay those of the last good step; a checkpoint on disk is untouched). "warn": a
        ``RuntimeWarning`` with the same text (on rank 0), and the step is skipped, as
        ``torch.cuda.amp.GradScaler`` does: the optimiser does not update on that batch,
        ``global_step`` does not advance, ``skipped_steps`` does. "off" or None: no check.
        Cost: one sum per parameter (about 1 % of a LeNet-5 step at batch 64).

    Attributes
    ----------
    epoch : int
        Epochs completed (over all ``fit`` calls and restored by checkpoints).
    global_step : int
        Optimiser steps taken.
    stop_training : bool
        Set by a callback to end ``fit`` after the current epoch.
    interrupted : bool
        True when the last ``fit`` was stopped by Ctrl-C (or any KeyboardInterrupt), False
        otherwise. The first Ctrl-C
        during ``fit`` (in the main thread, when SIGINT has Python's default handler, not in
        distributed mode) lets the current step finish, then ``fit`` stops: a partial epoch
        runs no ``on_epoch_end`` callbacks (so a :class:`~cnncore.callbacks.ModelCheckpoint`
        keeps the last complete epoch; ``epoch`` counts complete epochs only), a Ctrl-C
        during the epoch-end work (validation, a checkpoint save) lets that work finish;
        ``on_train_end`` callbacks run, then ``fit`` raises :class:`KeyboardInterrupt`. A
        second Ctrl-C raises at once. The model in memory holds the weights after the last
        step; to continue exactly, resume from the last checkpoint.
    skipped_steps : int
        Batches whose step was skipped for non-finite gradients (``check_gradients="warn"``).
    """

    def __init__(self, model, loss, optimizer, seed=None, memory_pool=True, distributed=None,
                 sync_batchnorm=False, check_gradients="raise"):
        if not isinstance(loss, Loss):
            raise TypeError(f"Trainer: loss must be a cnncore.losses.Loss, got {type(loss).__name__}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError("Trainer: optimizer must be a cnncore.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        if not isinstance(memory_pool, (bool, _memory.memory_pool)):
            raise TypeError("Trainer: memory_pool must be True, False or a "
                            f"cnncore.memory_pool, got {type(memory_pool).__name__}")
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.memory_pool = memory_pool
        self.check_gradients = _gradients.check_mode(check_gradients)
        self.epoch = 0
        self.global_step = 0
        self.skipped_steps = 0
        self.stop_training = False
        self.interrupted = False
        self._rng = np.random.default_rng(seed)
        self._dist = None
        if distributed is not None:
            from .distributed import DistributedContext
            if isinstance(distributed, DistributedContext):  # bucket size, overlap
                self._dist = distributed
                distributed.sync_batchnorm |= bool(sync_batchnorm)
            else:
                self._dist = DistributedContext(distributed, sync_batchnorm=sync_batchnorm)
        elif sync_batchnorm:
            raise ValueError("Trainer: sync_batchnorm=True needs distributed=...")

    @property
    def rank(self):
        """This process's rank (0 without ``distributed``)."""
        return 0 if self._dist is None else self._dist.rank

    @property
    def world_size(self):
        """Number of ranks (1 without ``distributed``)."""
        return 1 if self._dist is None else self._dist.size

    # ------------------------------------------------------------------ data checks
    def _check(self, x, y, where):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"Trainer.{where}: x must be a numpy array, got {type(x).__name__}")
        if x.dtype.kind != "f":
            raise TypeError(
                f"Trainer.{where}: x has dtype {x.dtype}; convert it to floats first, e.g. "
                f"x.astype(np.float32)[:, None] / 255 for (N, H, W) uint8 images")
        if len(x) == 0:
            raise ValueError(f"Trainer.{where}: x is empty")
        if y is not None:
            y = self.loss.prepare_targets(y, where=f"Trainer.{where}")
            if len(y) != len(x):
                raise ValueError(f"Trainer.{where}: x has {len(x)} samples but y has {len(y)}")
        return x, y

    def _batch(self, x, idx):
        xb = x[idx]
        dtype = self.model.dtype
        if dtype is not None and xb.dtype != dtype:
            return xb.astype(dtype)
        return np.ascontiguousarray(xb)

    # ------------------------------------------------------------------ training
    def fit(self, x, y, epochs=1, batch_size=32, validation_data=None, shuffle=True, seed=None,
            callbacks=None, verbose=1, transform=None):
        """Train for ``epochs`` more epochs.

        Parameters
        ----------
        x : ndarray (N, ...)
            Floating inputs in the model's layout (see the module docstring).
        y : ndarray
            Targets for the loss (class indices or one-hot rows for SoftmaxCrossEntropy).
        epochs : int
            Number of epochs to run in this call; epoch numbers continue from
            ``self.epoch`` (e.g. after :meth:`from_checkpoint`).
        batch_size : int
            The last batch of an epoch may be smaller.
        validation_data : (x_val, y_val), optional
            Evaluated after every epoch (``val_loss``, ``val_accuracy``).
        shuffle : bool
            Visit the samples in a new random order every epoch.
        seed : int, optional
            Reseed the shuffling generator; leave None to continue its stream (what a
            resumed run must do).
        callbacks : list of Callback
        verbose : int
            0 silent, 1 progress bar and one line per epoch, 2 one line per epoch.
        transform : callable, optional
            Data augmentation: ``transform(x_batch, rng) -> x_batch`` is applied to every
            training batch (not to validation data). ``rng`` is the trainer's generator (the
            one that shuffles), so augmented runs stay deterministic and resumable.

        Returns
        -------
        History

        Raises
        ------
        TrainingDiverged
            When the loss, or a gradient (``check_gradients="raise"``), becomes NaN or
            infinite; the message names the epoch, the batch and the step.
        KeyboardInterrupt
            After a Ctrl-C, once the current step (or the epoch-end work it landed in) is
            done and the ``on_train_end`` callbacks have run (see ``interrupted``). In
            distributed mode Ctrl-C keeps Python's default behaviour.
        """
        dist = self._dist
        if dist is not None and dist.rank != 0:
            verbose = 0
            callbacks = [cb for cb in callbacks or [] if not getattr(cb, "rank_zero_only", False)]
        session = contextlib.nullcontext() if dist is None else dist.fit_session(self)
        self.interrupted = False
        guard = _interrupt.SigintGuard(enabled=dist is None)
        try:
            with guard:  # restores the SIGINT handler, whatever happens
                with self._allocator(), session:
                    history, stopped_at = self._fit(x, y, epochs, batch_size,
                                                    validation_data, shuffle, seed, callbacks,
                                                    verbose, transform, guard)
        except KeyboardInterrupt:  # a second Ctrl-C, or one with another handler
            self.interrupted = True
            raise
        if guard.requested:  # checked after the handler is restored: no Ctrl-C gets lost
            self.interrupted = True
            raise KeyboardInterrupt(self._interrupt_message(stopped_at))
        return history

    def _interrupt_message(self, stopped_at):
        e = self.epoch
        saved = (f"checkpoints saved at epoch ends go up to epoch {e}" if e else
                 "no epoch-end checkpoint yet")
        return (f"Trainer.fit stopped by Ctrl-C after step {self.global_step}{stopped_at}; "
                f"{e} complete epoch{'s' * (e != 1)}: {saved} (the model in memory holds the "
                f"weights after step {self.global_step})")

    def _allocator(self):
        """The ``with`` block that ``fit``, ``evaluate`` and ``predict`` run in; nothing new
        when a cnncore pool is already NumPy's allocator (``evaluate`` inside ``fit``)."""
        if self.memory_pool is False or _memory.pool_active():
            return contextlib.nullcontext()
        if self.memory_pool is True:
            return _memory.memory_pool()
        return self.memory_pool

    def _fit(self, x, y, epochs, batch_size, validation_data, shuffle, seed, callbacks,
             verbose, transform, guard):
        """The training loop; returns ``(history, where it stopped after a Ctrl-C)``."""
        x, y = self._check(x, y, "fit")
        if validation_data is not None:
            if len(validation_data) != 2:
                raise ValueError("Trainer.fit: validation_data must be a pair (x_val, y_val)")
            xv, yv = self._check(validation_data[0], validation_data[1], "fit (validation_data)")
        if int(epochs) < 0 or int(batch_size) < 1:
            raise ValueError(f"Trainer.fit: need epochs >= 0 and batch_size >= 1, got "
                             f"epochs={epochs}, batch_size={batch_size}")
        epochs, batch_size = int(epochs), int(batch_size)
        callbacks = list(callbacks or [])
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"Trainer.fit: callbacks must be Callback instances, got {cb!r}")
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        n = len(x)
        n_batches = -(-n // batch_size)
        dist = self._dist
        where = "" if dist is None else f" on rank {dist.rank}"
        if dist is not None and dist.sync_batchnorm and n - (n_batches - 1) * batch_size \
                < dist.size:
            raise ValueError(f"Trainer.fit: sync_batchnorm needs every global batch to have "
                             f"at least one sample per rank ({dist.size}); batch_size="
                             f"{batch_size} on {n} samples leaves a smaller last batch")
        history = History()
        params = self.model.parameters()
        check_grads = self.check_gradients != "off"
        self.stop_training = False
        stopped_at = ""
        for cb in callbacks:
            cb.on_train_begin(self)
        first, last = self.epoch, self.epoch + epochs
        logs = {}
        for epoch in range(first, last):
            for cb in callbacks:
                cb.on_epoch_begin(self, epoch)
            self.model.train()
            t0 = time.perf_counter()
            order = self._rng.permutation(n) if shuffle else None
            progress = _Progress(n, f"epoch {epoch + 1}/{last}", verbose == 1)
            total_loss, total_correct, has_acc = 0.0, 0, True
            try:
                for b in range(n_batches):
                    sl = slice(b * batch_size, min(n, (b + 1) * batch_size))
                    idx = order[sl] if shuffle else sl
                    m = sl.stop - sl.start  # the global batch
                    lo, hi = (0, m) if dist is None else dist.bounds(m)  # this rank's part
                    if transform is not None:  # on the global batch: same result as 1 rank
                        xb = transform(self._batch(x, idx), self._rng)[lo:hi]
                    else:
                        xb = self._batch(x, order[sl][lo:hi] if shuffle else
                                         slice(sl.start + lo, sl.start + hi))
                    yb = y[idx][lo:hi]
                    for cb in callbacks:
                        cb.on_batch_begin(self, b)
                    for p in params:
                        p.grad.fill(0)
                    loss, correct = 0.0, 0
                    if hi > lo:
                        out = self.model.forward(xb)
                        loss = self.loss.forward(out, yb)
                        if not math.isfinite(loss):
                            raise TrainingDiverged(
                                f"loss is {loss} at epoch {epoch + 1}, batch {b + 1}/{n_batches}"
                                f" (step {self.global_step + 1}){where}; lower the learning "
                                "rate or check the inputs for NaN/Inf")
                        grad = self.loss.backward()
                        if hi - lo != m:  # d(global mean loss) = (local share) d(local mean)
                            grad = grad * ((hi - lo) / m)
                        # the inputs need no gradient: the first layer may skip it
                        self.model.backward_params(grad)
                        correct = self.loss.correct(out, yb) if has_acc else None
                    if dist is not None:
                        loss_sum, correct, _ = dist.reduce_step(
                            loss * (hi - lo), -1 if correct is None else correct, hi - lo)
                        loss, correct = loss_sum / m, None if correct < 0 else int(correct)
                    if check_grads and _gradients.nonfinite(self.optimizer.params):
                        self._nonfinite_gradients(epoch, b, n_batches, where)  # or raise
                    else:
                        self.optimizer.step()
                        self.global_step += 1
                    total_loss += loss * m
                    if correct is None:
                        has_acc = False
                    else:
                        total_correct += correct
                    seen = progress.done + m
                    progress.update(m, total_loss / seen, total_correct / seen if has_acc else None)
                    if callbacks:
                        blogs = {"loss": loss, "size": m}
                        for cb in callbacks:
                            cb.on_batch_end(self, b, blogs)
                    if guard.requested and b + 1 < n_batches:  # Ctrl-C: stop mid-epoch
                        stopped_at = f" (epoch {epoch + 1}, batch {b + 1}/{n_batches})"
                        break
            finally:
                progress.close()
            if stopped_at:  # a partial epoch: no epoch-end work, no checkpoint
                break
            if dist is not None:
                dist.end_epoch(self)  # rank 0's BatchNorm statistics, stop_training
            train_time = time.perf_counter() - t0
            logs = {"loss": total_loss / n, "accuracy": total_correct / n if has_acc else None}
            if validation_data is not None:
                val = self.evaluate(xv, yv, batch_size=max(batch_size, 256))
                logs["val_loss"], logs["val_accuracy"] = val["loss"], val["accuracy"]
            logs["lr"] = self.optimizer.lr
            logs["seconds"] = time.perf_counter() - t0
            logs["images_per_sec"] = n / train_time if train_time > 0 else float("inf")
            self.epoch = epoch + 1
            history.append(self.epoch, logs)
            if verbose:
                self._print_epoch(last, logs)
            for cb in callbacks:
                cb.on_epoch_end(self, epoch, logs)
            if guard.requested:  # Ctrl-C in the last step or the epoch-end work
                stopped_at = f" (at the end of epoch {epoch + 1})"
                break
            if self.stop_training:
                break
        for cb in callbacks:
            cb.on_train_end(self, logs)
        return history, stopped_at

    def _nonfinite_gradients(self, epoch, b, n_batches, where):
        """A gradient is NaN or infinite: raise, or warn and skip the step."""
        what = _gradients.describe(self.model, self.optimizer.params)
        at = (f"at epoch {epoch + 1}, batch {b + 1}/{n_batches} (step "
              f"{self.global_step + 1}){where}")
        if self.check_gradients == "raise":
            raise TrainingDiverged(
                f"non-finite gradient {at}: {what}; the step was not taken (the weights are "
                f"those after step {self.global_step}); lower the learning rate or check the "
                "inputs, or pass Trainer(check_gradients='warn') to skip such steps")
        self.skipped_steps += 1
        if self.rank == 0:
            warnings.warn(f"non-finite gradient {at}: {what}; step skipped (the optimiser "
                          "did not update)", RuntimeWarning, stacklevel=4)

    def _print_epoch(self, last, logs):
        parts = [f"epoch {self.epoch}/{last}", f"{logs['seconds']:.1f}s"]
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            if logs.get(key) is not None:
                parts.append(f"{key} {logs[key]:.4f}")
        parts.append(f"lr {logs['lr']:.3g}")
        parts.append(f"{logs['images_per_sec']:.0f} img/s")
        print(" - ".join(parts), flush=True)

    # ------------------------------------------------------------------ inference
    def evaluate(self, x, y, batch_size=256):
        """Mean loss and accuracy (None if not a classification target) over ``(x, y)``,
        in eval mode. Returns ``{"loss": float, "accuracy": float or None}``. Distributed:
        each rank evaluates its contiguous share of ``x`` and the sums are reduced."""
        with self._allocator():
            return self._evaluate(x, y, batch_size)

    def _evaluate(self, x, y, batch_size):
        x, y = self._check(x, y, "evaluate")
        dist = self._dist
        lo, hi = (0, len(x)) if dist is None else dist.bounds(len(x))
        if dist is not None:
            dist.broadcast_buffers(self.model)
        was_training = self.model.training
        self.model.eval()
        total_loss, total_correct, has_acc = 0.0, 0, True
        try:
            for start in range(lo, hi, batch_size):
                sl = slice(start, min(hi, start + batch_size))
                xb, yb = self._batch(x, sl), y[sl]
                out = self.model.forward(xb)
                total_loss += self.loss.forward(out, yb) * len(xb)
                correct = self.loss.correct(out, yb) if has_acc else None
                if correct is None:
                    has_acc = False
                else:
                    total_correct += correct
        finally:
            self.model.train(was_training)
        if dist is not None:
            total_loss, total_correct = dist.sum_scalars(total_loss,
                                                         total_correct if has_acc else -1)
            has_acc = total_correct >= 0
        n = len(x)
        return {"loss": total_loss / n, "accuracy": total_correct / n if has_acc else None}

    def predict(self, x, batch_size=256):
        """Model outputs for ``x`` in eval mode (e.g. logits; ``argmax(axis=1)`` for
        classes). Distributed: each rank predicts its share; every rank gets all rows."""
        x, _ = self._check(x, None, "predict")
        dist = self._dist
        if dist is not None:
            dist.broadcast_buffers(self.model)
            lo, hi = dist.bounds(len(x))
            x = x[lo:hi]
        dtype = self.model.dtype
        if dtype is not None and x.dtype != dtype:
            x = x.astype(dtype)
        with self._allocator():
            out = self.model.predict(x, batch_size=batch_size) if len(x) else None
        return out if dist is None else dist.gather_rows(out)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self):
        """JSON-serialisable trainer state: counters, shuffling generator, loss config."""
        return {"epoch": self.epoch, "global_step": self.global_step,
                "skipped_steps": self.skipped_steps,
                "shuffle_rng": generator_state(self._rng), "loss": self.loss.to_config()}

    def load_state_dict(self, state):
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.skipped_steps = int(state.get("skipped_steps", 0))  # absent in older files
        self._rng = generator_from_state(state["shuffle_rng"])

    def save_checkpoint(self, path):
        """Write model, optimiser state and trainer state to ``path`` (atomically).
        Distributed: only rank 0 writes (the other ranks return at once)."""
        if self.rank != 0:
            return
        serialization.save(path, self.model, optimizer=self.optimizer,
                           trainer_state=self.state_dict())

    def load_checkpoint(self, path):
        """Load a checkpoint into this trainer's model, optimiser and counters (the model and
        optimiser must match the saved ones)."""
        ck = serialization.load_checkpoint(path)
        if ck.optimizer_state is None or ck.trainer_state is None:
            raise ValueError(f"{path}: a model file, not a training checkpoint (no optimiser "
                             "or trainer state); write it with Trainer.save_checkpoint")
        self.model.load_state_dict(ck.model.state_dict(), where=str(path))
        self.model.load_extra_states(ck.model.named_extra_states())
        self.optimizer.load_state_dict(ck.optimizer_state)
        self.load_state_dict(ck.trainer_state)
        return self

    @classmethod
    def from_checkpoint(cls, path, loss=None, distributed=None, sync_batchnorm=False):
        """Rebuild model, optimiser (from its saved config and state), loss and counters from
        a file written by :meth:`save_checkpoint`; ``fit`` then continues the run exactly.
        Distributed: every rank reads the file (``distributed`` and ``sync_batchnorm`` as
        in :class:`Trainer`)."""
        ck = serialization.load_checkpoint(path)
        if ck.optimizer_state is None or ck.trainer_state is None:
            raise ValueError(f"{path}: a model file, not a training checkpoint (no optimiser "
                             "or trainer state); write it with Trainer.save_checkpoint")
        model = ck.model.train()
        try:
            optimizer = optimizer_from_config(ck.optimizer_config, model.parameters())
            optimizer.load_state_dict(ck.optimizer_state)
            if loss is None:
                loss = loss_from_config(ck.trainer_state["loss"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: invalid optimiser or trainer state ({e})") from e
        trainer = cls(model, loss, optimizer, distributed=distributed,
                      sync_batchnorm=sync_batchnorm)
        trainer.load_state_dict(ck.trainer_state)
        return trainer
