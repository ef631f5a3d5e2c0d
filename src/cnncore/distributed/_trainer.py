"""What :class:`cnncore.Trainer` does differently when ``distributed`` is set: state
broadcast, batch sharding, bucketed gradient sums, metric sums, sharded inference."""

import contextlib

import numpy as np

from . import _sync_bn
from ._comm import get_communicator, install_abort_hook, shard_bounds

__all__ = ["DistributedContext", "GradientReducer", "DEFAULT_BUCKET_BYTES"]

DEFAULT_BUCKET_BYTES = 8 << 20


class GradientReducer:
    """Sum the gradients of ``params`` over the ranks, bucket by bucket.

    Buckets follow the reverse parameter order (the order backward produces the gradients),
    hold one dtype each and about ``bucket_bytes`` (a larger parameter gets a bucket of its
    own). Each bucket is copied into one flat buffer, summed in rank order
    (:meth:`Communicator.allreduce_sum_`) and copied back.

    With ``overlap=True`` (experimental; see :meth:`attach`) the first half of a bucket's
    sum (the non-blocking ``Ialltoallv`` of the reduce-scatter) starts as soon as the
    backward pass has produced the gradients of this bucket and of every bucket before it
    (buckets start in index order on every rank, as collectives must be called in the same
    order everywhere), while backward goes on with the earlier layers; :meth:`reduce` then
    completes them. Same arithmetic, same result.
    """

    def __init__(self, comm, params, bucket_bytes=DEFAULT_BUCKET_BYTES, overlap=False):
        self.comm = comm
        self.params = list(params)
        self.overlap = bool(overlap)
        self._pending = {}  # bucket index -> (request, pieces) started during backward
        self._left = None  # per bucket: gradients still to come in this backward pass
        self._next = 0  # the next bucket to start
        self._wrapped = []
        self.buckets = []  # (list of params, flat buffer)
        group, nbytes, dtype = [], 0, None
        for p in reversed(self.params):
            if group and (p.grad.dtype != dtype or nbytes + p.grad.nbytes > bucket_bytes):
                self._add(group, dtype)
                group, nbytes = [], 0
            group.append(p)
            nbytes += p.grad.nbytes
            dtype = p.grad.dtype
        if group:
            self._add(group, dtype)

    def _add(self, group, dtype):
        flat = np.empty(sum(p.grad.size for p in group), dtype=dtype)
        self.buckets.append((group, flat))

    @property
    def nbytes(self):
        return sum(flat.nbytes for _, flat in self.buckets)

    @staticmethod
    def _pack(group, flat):
        pos = 0
        for p in group:
            flat[pos:pos + p.grad.size] = p.grad.reshape(-1)
            pos += p.grad.size

    @staticmethod
    def _unpack(group, flat):
        pos = 0
        for p in group:
            p.grad[...] = flat[pos:pos + p.grad.size].reshape(p.grad.shape)
            pos += p.grad.size

    def reduce(self):
        """Sum every bucket over the ranks (finishing those started during backward)."""
        if self.comm.size == 1:
            return
        if not self._wrapped:
            for group, flat in self.buckets:
                self._pack(group, flat)
                self.comm.allreduce_sum_(flat)
                self._unpack(group, flat)
            return
        # overlap: the same non-blocking operations, in the same order, on every rank (also
        # on a rank that had nothing to compute in this step)
        self._start_ready(everything=True)
        for i, (group, flat) in enumerate(self.buckets):
            self.comm.finish_allreduce_sum_(flat, *self._pending.pop(i))
            self._unpack(group, flat)
        self._left, self._next = None, 0

    # ------------------------------------------------------------------ overlap
    def attach(self, model):
        """Wrap the ``backward`` / ``backward_params`` of every layer of ``model`` that owns
        parameters, so that a bucket's sum starts when its gradients are complete (only
        with ``overlap=True`` and more than one rank). :meth:`detach` undoes it."""
        if not self.overlap or self.comm.size == 1:
            return
        where = {}
        for i, (group, _) in enumerate(self.buckets):
            for p in group:
                where[id(p)] = i
        for _, layer in model.named_layers():
            own = [where[id(p)] for p in layer._params.values() if id(p) in where]
            if not own:
                continue
            for name in ("backward", "backward_params"):
                had = name in layer.__dict__
                inner = getattr(layer, name)
                self._wrapped.append((layer, name, had, layer.__dict__.get(name)))
                setattr(layer, name, self._hooked(inner, own, id(layer)))

    def _hooked(self, inner, own, key):
        def call(grad_out):
            result = inner(grad_out)
            self._done(own, key)
            return result
        return call

    def _done(self, buckets, key):
        if self._left is None:
            self._left = [len(group) for group, _ in self.buckets]
            self._seen = set()
        if key in self._seen:  # backward_params calling backward: count the layer once
            return
        self._seen.add(key)
        for i in buckets:
            self._left[i] -= 1
        self._start_ready()
        self.comm.progress([req for req, _ in self._pending.values()])

    def _start_ready(self, everything=False):
        while self._next < len(self.buckets) and (
                everything or (self._left is not None and self._left[self._next] <= 0)):
            group, flat = self.buckets[self._next]
            self._pack(group, flat)
            self._pending[self._next] = self.comm.start_allreduce_sum(flat)
            self._next += 1

    def detach(self):
        for layer, name, had, old in reversed(self._wrapped):
            if had:
                setattr(layer, name, old)
            else:
                layer.__dict__.pop(name, None)
        self._wrapped = []


class DistributedContext:
    """The Trainer's distributed side (one per Trainer).

    ``Trainer(distributed=...)`` makes one from ``"mpi"`` or a communicator; pass one
    yourself to set ``bucket_bytes`` or ``overlap`` (see :class:`GradientReducer`).
    """

    def __init__(self, distributed, sync_batchnorm=False, bucket_bytes=DEFAULT_BUCKET_BYTES,
                 overlap=False):
        self.comm = get_communicator(distributed)
        self.rank, self.size = self.comm.rank, self.comm.size
        self.sync_batchnorm = bool(sync_batchnorm)
        self.bucket_bytes = int(bucket_bytes)
        self.overlap = bool(overlap)
        self.reducer = None
        install_abort_hook(self.comm)

    @property
    def is_root(self):
        return self.rank == 0

    # ------------------------------------------------------------------ state
    def _check_same_model(self, model):
        sig = [(name, p.data.shape, p.data.dtype.str) for name, p in model.named_parameters()]
        sigs = self.comm.allgather(sig)
        for r, other in enumerate(sigs):
            if other != sigs[0]:
                i = next((i for i, (a, b) in enumerate(zip(sigs[0], other)) if a != b),
                         min(len(other), len(sigs[0])))
                first = lambda s: s[i] if i < len(s) else "nothing"  # noqa: E731
                raise ValueError(f"Trainer(distributed): rank {r} has a different model than "
                                 f"rank 0 (parameter {i}: rank 0 {first(sigs[0])}, rank {r} "
                                 f"{first(other)}); build the same model on every rank")

    def broadcast_state(self, trainer):
        """Rank 0's weights, buffers, extra states (Dropout generators), optimiser state and
        trainer state (epoch, step, shuffling generator) to every rank."""
        model, comm = trainer.model, self.comm
        self._check_same_model(model)
        for p in model.parameters():
            comm.bcast_array_(p.data)
        self.broadcast_buffers(model)
        extra = comm.bcast(model.named_extra_states() if self.is_root else None)
        if not self.is_root:
            model.load_extra_states(extra)
        opt = comm.bcast(trainer.optimizer.state_dict() if self.is_root else None)
        tstate = comm.bcast(trainer.state_dict() if self.is_root else None)
        if not self.is_root:
            trainer.optimizer.load_state_dict(opt)
            trainer.load_state_dict(tstate)

    def broadcast_buffers(self, model):
        """BatchNorm running statistics (and any buffer) from rank 0: every rank then
        evaluates, and rank 0 saves, the same model."""
        for _, b in model.named_buffers():
            self.comm.bcast_array_(b)

    @contextlib.contextmanager
    def fit_session(self, trainer):
        """Broadcast the state, build the gradient buckets, hook BatchNorm if asked."""
        self.broadcast_state(trainer)
        self.reducer = GradientReducer(self.comm, trainer.model.parameters(),
                                       self.bucket_bytes, self.overlap)
        hooked = _sync_bn.install(trainer.model, self.comm) if self.sync_batchnorm else []
        self.reducer.attach(trainer.model)
        try:
            yield self
        finally:
            self.reducer.detach()
            _sync_bn.uninstall(hooked)

    # ------------------------------------------------------------------ training steps
    def bounds(self, m):
        """This rank's ``(lo, hi)`` of a global batch of ``m`` samples."""
        return shard_bounds(m, self.rank, self.size)

    def reduce_step(self, loss_sum, correct, count):
        """Sum the gradients (bucketed), then ``(loss * samples, correct, samples)``."""
        self.reducer.reduce()
        return self.comm.sum_scalars(loss_sum, correct, count)

    def end_epoch(self, trainer):
        self.broadcast_buffers(trainer.model)
        trainer.stop_training = bool(self.comm.bcast(trainer.stop_training))

    # ------------------------------------------------------------------ inference
    def sum_scalars(self, *values):
        return self.comm.sum_scalars(*values)

    def gather_rows(self, local):
        return self.comm.allgather_rows(local)
