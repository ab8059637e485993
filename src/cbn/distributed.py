"""Synchronized batch normalization across processes over MPI (data-parallel training).

When a model is trained data-parallel, every process (MPI rank) holds part of the batch. A plain
`cbn.BatchNorm` would normalize each part with its own statistics; `SyncBatchNorm` normalizes
every part with the statistics of the whole batch, as if one process held it all, and computes
the gradients of the whole batch. It is PyTorch's ``torch.nn.SyncBatchNorm`` for CPU processes,
built on the split kernels of `cbn.split` and on MPI through mpi4py.

Per training step and per rank (P ranks, C channels), the communication is:

* forward: one ``Allgather`` of this rank's ``(count, mean[C], M2[C])`` (1 + 2C float64);
  every rank combines the P parts in rank order (Chan's formula, exact for uneven parts), so
  every rank gets the same bits;
* backward: one ``Allreduce(SUM)`` of ``sum(dy)[C], sum(dy*(x - mean))[C], sum(x - mean)[C]``
  plus one flag (3C + 1 float64); the third sum corrects for the rounding of the saved mean, so
  data far from zero keep their gradients' precision.

That is 16*P bytes per channel gathered and 24 bytes per channel all-reduced, independent of the
batch and spatial sizes. ``bench/bench_distributed.py`` measures it.

mpi4py and an MPI library are an optional extra: ``pip install "cbn[mpi]"`` (mpi4py and
MPICH's wheel, which provides ``mpiexec``). ``import cbn`` never needs them; ``import
cbn.distributed`` raises ImportError naming the extra when they are missing. Run a script with
``mpiexec -n 2 python script.py``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

try:
    from mpi4py import MPI
except ImportError as exc:  # mpi4py missing
    raise ImportError(
        'cbn.distributed needs mpi4py and an MPI library, the optional extra: '
        'pip install "cbn[mpi]"') from exc
except RuntimeError as exc:  # mpi4py present but no loadable MPI library / MPI_Init failed
    raise ImportError(
        f'cbn.distributed: mpi4py could not load or start an MPI library ({exc}); '
        'pip install "cbn[mpi]" installs mpi4py with MPICH') from exc

from . import split
from . import _validate as v
from ._validate import F64 as _F64
from ._types import FloatArray
from .layer import BatchNorm, _buffer, checked_input

__all__ = ["SyncBatchNorm"]


class SyncBatchNorm(BatchNorm):
    """Batch normalization whose training statistics and gradients span every rank of `comm`.

    Same constructor, attributes and behaviour as `cbn.BatchNorm`, plus `comm`::

        SyncBatchNorm(num_features, comm=None, *, eps=1e-5, momentum=0.1, affine=True,
                      track_running_stats=True, bias=True, layout="NCHW", dtype=np.float32,
                      activation=None, n_threads=None)

    Every rank calls the same methods in the same order with its own part of the batch (any
    number of samples, 0 included; when every rank's part is empty, as for an empty batch in
    `cbn.BatchNorm`, outputs are empty, gradients 0, the running statistics stay and the batch
    is counted). In training mode:

    * ``forward(x)`` normalizes x with the mean and biased variance of the concatenation of
      every rank's x (in rank order), and updates the running statistics with the unbiased
      variance of that whole batch (``momentum=None``: cumulative average). Running statistics
      and ``num_batches_tracked`` are bit-identical on every rank.
    * ``backward(dy)`` returns this rank's part of dx for the whole batch, as if one process had
      run ``cbn.batch_norm_backward`` on the concatenated x and dy. ``grad_weight`` and
      ``grad_bias`` are the gradients of the whole batch, identical on every rank: the sums over
      every rank's samples, so do not all-reduce them again (see Notes).

    In eval mode nothing is communicated: running statistics (or, with
    ``track_running_stats=False``, this rank's own batch statistics, as in PyTorch) are used
    exactly as by `cbn.BatchNorm`.

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    comm : mpi4py.MPI.Intracomm, optional
        The ranks that share the batch; default ``MPI.COMM_WORLD``. Every rank of it must call
        forward/backward together (they are collective operations).
    eps, momentum, affine, track_running_stats, bias, layout, dtype, activation, n_threads
        As for `cbn.BatchNorm` (keyword-only here: comm is the second positional argument).

    Notes
    -----
    PyTorch's SyncBatchNorm returns each rank's *local* share of dweight/dbias and leaves their
    averaging to DistributedDataParallel, whose all-reduce divides by the world size. Here the
    global sums come for free with the all-reduce that dx needs, so ``grad_weight`` and
    ``grad_bias`` already hold ``sum over ranks`` of those shares: the gradient of the sum of
    the losses every rank differentiated. If the other parameters' gradients are averaged over
    ranks (DDP's convention: each rank's loss is a mean over its own samples), divide these two
    by ``comm.size`` to match, and leave them out of the all-reduce.

    A bad input on one rank (x or dy of the wrong shape or dtype) raises its error there and,
    as a RuntimeError naming the failing ranks, on every other one, instead of leaving them
    blocked in the collective; nothing is updated on any rank and the layer stays usable.
    Grad_weight and grad_bias are identical on every rank as long as the MPI library's
    Allreduce gives every rank the same sum (MPICH does; the tests check it).
    """

    def __init__(self, num_features: int, comm: MPI.Intracomm | None = None,
                 **kwargs: Any) -> None:
        super().__init__(num_features, **kwargs)
        if comm is None:
            comm = MPI.COMM_WORLD
        if not isinstance(comm, MPI.Intracomm):
            raise TypeError(
                f"comm must be an mpi4py intracommunicator (mpi4py.MPI.Intracomm, e.g. "
                f"MPI.COMM_WORLD), got {type(comm).__name__}")
        if comm == MPI.COMM_NULL:
            raise ValueError("comm must be a valid communicator, got MPI.COMM_NULL")
        self.comm = comm
        self._sync_saved: dict[str, Any] | None = None

    # -- training forward ----------------------------------------------------------------------

    # no residual (a fused residual is not implemented across ranks): the override narrows
    # BatchNorm.forward's signature, hence the ignore
    def forward(self, x: ArrayLike) -> FloatArray:  # type: ignore[override]
        """y for this rank's x; in training mode with the whole batch's statistics (collective)."""
        if not self.training:
            self._sync_saved = None
            return super().forward(x)
        return self._sync_forward(x)

    def _sync_forward(self, x: ArrayLike) -> FloatArray:
        comm, C = self.comm, self.num_features
        self._sync_saved = None
        # this rank's part: [count, mean[C], m2[C]]; count -1 tells the others it failed
        mine = np.zeros(1 + 2 * C, _F64)
        error = None
        try:
            xa = checked_input(self, x)   # xa: the checked array (x: what the caller gave)
            n, mean, m2 = split.batch_stats(xa, layout=self.layout, n_threads=self.n_threads)
            mine[0] = n
            mine[1:1 + C] = mean
            mine[1 + C:] = m2
        except Exception as exc:  # raised below, after the collective the other ranks wait in
            error = exc
            mine[:] = 0.0
            mine[0] = -1.0
        parts = np.empty((comm.Get_size(), 1 + 2 * C), _F64)
        comm.Allgather(mine, parts)
        if error is not None:
            raise error
        _raise_if_failed(np.flatnonzero(parts[:, 0] < 0), comm, "forward")

        # every rank combines the same gathered bits in rank order: identical results
        count, mean, m2 = split.combine_stats(parts[:, 0], parts[:, 1:1 + C], parts[:, 1 + C:])
        v.enough_values(int(count), xa.shape, comm.Get_size())
        # an empty batch on every rank has mean 0 and variance 0 (as in batch_norm_train)
        var = m2 / count if count > 0 else m2
        with np.errstate(divide="ignore"):
            invstd = 1.0 / np.sqrt(var + self.eps)
        y = split.batch_norm_normalize(xa, mean, invstd, self.weight, self.bias,
                                       layout=self.layout, activation=self.activation,
                                       n_threads=self.n_threads)
        if self.track_running_stats:
            self._update_running(count, mean, m2)
        dtype = xa.dtype
        self._sync_saved = {
            "x": xa,
            "y": y if self.activation is not None else None,
            "mean": mean.astype(dtype),       # save_mean / save_invstd in x's dtype, as
            "invstd": invstd.astype(dtype),   # batch_norm_train returns them
            "weight": None if self.weight is None else self.weight.copy(),
            "count": count,
        }
        return y

    def _update_running(self, count: float, mean: NDArray[np.float64],
                        m2: NDArray[np.float64]) -> None:
        """PyTorch's update with the whole batch's unbiased variance, as the fused kernel does it
        (float64 arithmetic, rounded once to the buffers' dtype). An empty batch is counted but
        leaves the statistics as they are (PyTorch)."""
        self.num_batches_tracked += 1
        if count == 0:
            return
        m = (1.0 / self.num_batches_tracked if self.momentum is None else float(self.momentum))
        rm, rv = _buffer(self.running_mean), _buffer(self.running_var)
        rm[...] = (1.0 - m) * rm.astype(_F64) + m * mean
        rv[...] = (1.0 - m) * rv.astype(_F64) + m * (m2 / (count - 1.0))

    # -- backward ------------------------------------------------------------------------------

    def backward(self, dy: ArrayLike) -> FloatArray | Any:
        """dx for this rank's part of the whole batch (collective after a training forward);
        sets grad_weight and grad_bias to the whole batch's gradients."""
        if self._sync_saved is None:
            # eval-mode forward (local) or no forward at all: cbn.BatchNorm's behaviour
            return super().backward(dy)
        comm, C = self.comm, self.num_features
        saved = self._sync_saved
        # [sum_dy[C], sum_dy_xmu[C], sum_xmu[C], failed]: the flag counts ranks whose local
        # part failed
        sums = np.zeros(3 * C + 1, _F64)
        error = None
        try:
            dy = v.float_array(dy, "dy")
            local = split.batch_norm_backward_reduce(
                dy, saved["x"], saved["mean"], y=saved["y"], activation=self.activation,
                layout=self.layout, n_threads=self.n_threads)
            sums[:3 * C] = np.concatenate(local)
        except Exception as exc:
            error = exc
            sums[:] = 0.0
            sums[3 * C] = 1.0
        comm.Allreduce(MPI.IN_PLACE, sums, op=MPI.SUM)
        if error is not None:
            raise error
        if sums[3 * C] != 0:
            _raise_if_failed(None, comm, "backward", n_failed=int(sums[3 * C]))
        sum_dy, sum_dy_xmu, sum_xmu = (sums[i * C:(i + 1) * C].copy() for i in range(3))
        dtype = saved["x"].dtype
        if saved["count"] == 0:
            # every rank's part is empty (dy was checked by the reduce): an empty dx and zero
            # gradients (sum_dy_xmu * invstd would be 0 * inf = NaN for eps=0)
            self._set_grads(sum_dy_xmu.astype(dtype), sum_dy.astype(dtype))
            return np.empty(saved["x"].shape, dtype)
        dx = split.batch_norm_backward_dx(
            dy, saved["x"], saved["mean"], saved["invstd"], sum_dy, sum_dy_xmu, sum_xmu,
            saved["count"], saved["weight"], y=saved["y"], activation=self.activation,
            layout=self.layout, n_threads=self.n_threads)
        self._set_grads(*split.batch_norm_backward_params(sum_dy, sum_dy_xmu, sum_xmu,
                                                          saved["count"], saved["invstd"]))
        return dx


def _raise_if_failed(failed_ranks: NDArray[np.intp] | None, comm: MPI.Intracomm, phase: str,
                     n_failed: int | None = None) -> None:
    if failed_ranks is not None:
        if failed_ranks.size == 0:
            return
        who = f"rank(s) {', '.join(map(str, failed_ranks.tolist()))}"
    else:
        who = f"{n_failed} other rank(s)"
    raise RuntimeError(
        f"SyncBatchNorm {phase} failed on {who} of comm (see the error raised there); "
        f"this rank (rank {comm.Get_rank()}) stopped too and updated nothing")
