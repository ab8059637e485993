"""Communication cost of cbn.distributed.SyncBatchNorm per training step.

Run under MPI (every rank holds a batch of the given per-rank shape)::

    OMP_NUM_THREADS=1 mpiexec -n 2 python bench/bench_distributed.py
    mpiexec -n 2 python bench/bench_distributed.py --shapes 32x64x56x56,256x1024 --layout NHWC
    mpiexec -n 2 python bench/bench_distributed.py --json dist.json

For each shape, rank 0 prints:

* the bytes each rank exchanges per step: forward, an Allgather of every rank's
  (count, mean[C], M2[C]), P*(1 + 2C) float64 received; backward, one Allreduce of
  (sum_dy[C], sum_dy_xmu[C], sum_xmu[C], flag), 3C + 1 float64; per channel that is ~16*P
  and ~24 bytes,
  against M*itemsize bytes of activations per channel and rank;
* median times per step (the slowest rank's, over --rounds): the synchronized forward and
  backward of SyncBatchNorm; the same work without communication (cbn.batch_norm_train /
  batch_norm_backward on the rank's own part); and the two collectives alone on buffers of the
  same size; `comm %` is their share of the synchronized step.

With more ranks than cores (e.g. -n 3 on 2 cores) MPICH's busy-polling ranks take turns on the
cores and the collectives cost scheduler slices, not network time: keep ranks * threads <= cores.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

try:
    import cbn
except ImportError:  # a source checkout with an in-place build: use src/
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "src"))
    import cbn

from mpi4py import MPI  # noqa: E402

from cbn.bench import settle_allocator  # noqa: E402
from cbn.distributed import SyncBatchNorm  # noqa: E402

# The last is larger than a 32 MB last-level cache on every rank (51 MB float32): DRAM-resident.
DEFAULT_SHAPES = "16x64x28x28,8x256x14x14,4x2048x7x7,64x1024,64x64x56x56"


def parse_shape(text):
    return tuple(int(s) for s in text.lower().split("x"))


def to_layout(shape_nchw, layout):
    """A shape written in NCHW order, permuted for channels-last."""
    if layout == "NHWC" and len(shape_nchw) > 2:
        return (shape_nchw[0],) + tuple(shape_nchw[2:]) + (shape_nchw[1],)
    return shape_nchw


def slowest(comm, seconds):
    """The step takes as long as its slowest rank."""
    return comm.allreduce(seconds, op=MPI.MAX)


def timed(comm, fn):
    comm.Barrier()
    t0 = time.perf_counter()
    fn()
    return slowest(comm, time.perf_counter() - t0)


def bench_shape(comm, shape, layout, dtype, rounds):
    P = comm.Get_size()
    rng = np.random.default_rng(comm.Get_rank())
    x = rng.normal(1.0, 2.0, shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[-1] if layout == "NHWC" else shape[1]
    M = x.size // C
    bn = SyncBatchNorm(C, comm, layout=layout, dtype=dtype)
    w, b = bn.weight, bn.bias
    gather_send = np.zeros(1 + 2 * C)
    gather_recv = np.empty((P, 1 + 2 * C))
    reduce_buf = np.zeros(3 * C + 1)
    out = {k: [] for k in ("sync_fwd", "sync_bwd", "local_fwd", "local_bwd", "allgather",
                           "allreduce")}
    state = {}

    def local_fwd():
        state["y"], state["m"], state["s"] = cbn.batch_norm_train(x, w, b, layout=layout)

    def local_bwd():
        cbn.batch_norm_backward(dy, x, state["m"], state["s"], w, layout=layout)

    steps = [("sync_fwd", lambda: bn(x)), ("sync_bwd", lambda: bn.backward(dy)),
             ("local_fwd", local_fwd), ("local_bwd", local_bwd),
             ("allgather", lambda: comm.Allgather(gather_send, gather_recv)),
             ("allreduce", lambda: comm.Allreduce(MPI.IN_PLACE, reduce_buf, op=MPI.SUM))]
    for name, fn in steps:     # warm-up
        timed(comm, fn)
    for _ in range(rounds):
        for name, fn in steps:
            out[name].append(timed(comm, fn))
    med = {k: float(np.median(v)) for k, v in out.items()}
    itemsize = np.dtype(dtype).itemsize
    gathered = P * (1 + 2 * C) * 8
    reduced = (3 * C + 1) * 8
    sync = med["sync_fwd"] + med["sync_bwd"]
    return {
        "shape": list(shape), "layout": layout, "dtype": np.dtype(dtype).name, "ranks": P,
        "channels": C, "values_per_channel_per_rank": M,
        "bytes_gathered_per_step": gathered, "bytes_allreduced_per_step": reduced,
        "bytes_per_channel_per_step": (gathered + reduced) / C,
        "activation_bytes_per_channel_per_rank": M * itemsize,
        "median_s": med,
        "comm_share": (med["allgather"] + med["allreduce"]) / sync if sync > 0 else float("nan"),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES,
                        help="per-rank shapes in NCHW order, comma-separated (default %(default)s)")
    parser.add_argument("--layout", default="NCHW", choices=["NCHW", "NHWC"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json", help="write the results to this file (rank 0)")
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    rank, P = comm.Get_rank(), comm.Get_size()
    settle_allocator()  # malloc's steady state: big outputs from the heap, not fresh mmap()s
    if rank == 0:
        print(f"cbn {cbn.__version__} SyncBatchNorm: {P} rank(s), {cbn.get_num_threads()} "
              f"thread(s) per rank, {MPI.Get_library_version().splitlines()[0].strip()}, "
              f"{args.layout} {args.dtype}, median of {args.rounds} steps, slowest rank")
        print(f"{'per-rank shape':>18} {'C':>5} {'gathered B':>10} {'allred. B':>9} "
              f"{'B/chan':>7} {'act B/chan':>10} | {'sync fwd':>8} {'sync bwd':>8} "
              f"{'local fwd':>9} {'local bwd':>9} {'allgather':>9} {'allreduce':>9} "
              f"{'comm %':>6}   (ms)")
    results = []
    for text in args.shapes.split(","):
        shape = to_layout(parse_shape(text), args.layout)
        r = bench_shape(comm, shape, args.layout, np.dtype(args.dtype), args.rounds)
        results.append(r)
        if rank == 0:
            m = {k: v * 1e3 for k, v in r["median_s"].items()}
            print(f"{'x'.join(map(str, shape)):>18} {r['channels']:>5} "
                  f"{r['bytes_gathered_per_step']:>10} {r['bytes_allreduced_per_step']:>9} "
                  f"{r['bytes_per_channel_per_step']:>7.1f} "
                  f"{r['activation_bytes_per_channel_per_rank']:>10} | "
                  f"{m['sync_fwd']:>8.3f} {m['sync_bwd']:>8.3f} {m['local_fwd']:>9.3f} "
                  f"{m['local_bwd']:>9.3f} {m['allgather']:>9.3f} {m['allreduce']:>9.3f} "
                  f"{100 * r['comm_share']:>5.1f}%")
    if rank == 0:
        print("gathered B: forward Allgather, P*(1+2C) float64 received per rank; allred. B: "
              "backward Allreduce, (2C+1) float64; B/chan: both per channel; act B/chan: one "
              "rank's activations per channel (x alone)")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"ranks": P, "threads_per_rank": cbn.get_num_threads(),
                           "mpi": MPI.Get_library_version().splitlines()[0].strip(),
                           "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
