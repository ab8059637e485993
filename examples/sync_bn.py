"""Data-parallel batch norm over MPI with cbn.distributed.SyncBatchNorm.

    pip install ".[mpi]"                       # mpi4py + MPICH (provides mpiexec)
    mpiexec -n 2 python examples/sync_bn.py    # any number of ranks, 1 included

Every rank takes its own, uneven, share of each batch, runs forward and backward through the
same SyncBatchNorm, and updates its weight and bias with the gradients of the whole batch. Rank 0
then gathers the outputs and checks them against single-process cbn on the whole batch.
"""
import numpy as np
from mpi4py import MPI

import cbn
from cbn.distributed import SyncBatchNorm

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()

N, C, H, W = 10, 4, 5, 5                   # the whole batch, split over the ranks
rng = np.random.default_rng(0)             # same seed everywhere: every rank builds the same data
target = rng.normal(size=(N, C, H, W)).astype(np.float32)
bounds = [N * r // size for r in range(size + 1)]   # uneven when size does not divide N
lo, hi = bounds[rank], bounds[rank + 1]

bn = SyncBatchNorm(C, comm)                # layout="NCHW", dtype=float32, momentum=0.1, ...
lr = 0.5
for step in range(5):
    x = rng.normal(3.0, 2.0, (N, C, H, W)).astype(np.float32)    # the whole batch ...
    w_used, b_used = bn.weight.copy(), bn.bias.copy()
    y = bn(x[lo:hi])                                              # ... this rank's part
    dy = (y - target[lo:hi]) / (N * H * W)                        # d(mean squared error)/dy
    dx = bn.backward(dy)
    bn.weight -= lr * bn.grad_weight      # grad_* are the whole batch's, the same on every rank
    bn.bias -= lr * bn.grad_bias
    loss = comm.allreduce(float(((y - target[lo:hi]) ** 2).sum())) / (N * C * H * W)
    if rank == 0:
        print(f"step {step}: loss {loss:.4f}  (rank 0 holds samples {lo}..{hi - 1} of {N})")

# the last step's output, gathered, against one process on the whole batch
ys = comm.gather(y, root=0)
same = comm.allgather(bn.running_var.tobytes() + bn.weight.tobytes())
if rank == 0:
    y_ref, _, _ = cbn.batch_norm_train(x, w_used, b_used)
    print(f"{size} rank(s): max |y - single-process y| = "
          f"{np.abs(np.concatenate(ys) - y_ref).max():.2e}; running_var and weight "
          f"identical on every rank: {all(s == same[0] for s in same)}")
