"""MPI worker for tests/test_distributed.py: ``mpiexec -n P python mpi_worker.py PLAN.json OUTDIR``.

Every rank reads the same plan (a list of cases), builds each case's whole batches from its seed
(`case_data`, which the test calls too), runs `cbn.distributed.SyncBatchNorm` on its own slice of
them, and writes what it saw to ``OUTDIR/<case>_rank<r>.npz``. The test, in one process, compares
those with `cbn.batch_norm_train` / `cbn.batch_norm_backward` on the whole batches.

Importing this module needs no MPI (the test imports `case_data` from it).
"""
import json
import os
import sys
import traceback

import numpy as np


def slices(sizes):
    """[(lo, hi)] of each rank's rows of the whole batch."""
    bounds = np.cumsum([0] + list(sizes))
    return [(int(bounds[r]), int(bounds[r + 1])) for r in range(len(sizes))]


def case_data(case):
    """The whole batches of a case: [(x, dy)] per training step, then x_eval; params (w, b).
    x lies around case["loc"] (default 0)."""
    rng = np.random.default_rng(case["seed"])
    dtype = np.dtype(case["dtype"])
    shape = (sum(case["sizes"]),) + tuple(case["sample_shape"])
    cl = case["layout"] in ("NHWC", "channels_last")
    C = shape[-1] if cl else shape[1]
    bshape = [1] * len(shape)
    bshape[-1 if cl else 1] = C
    offset = rng.uniform(-3.0, 3.0, C).reshape(bshape)
    spread = rng.uniform(0.5, 2.0, C).reshape(bshape)

    loc = case.get("loc", 0.0)

    def batch():
        return (loc + offset + spread * rng.standard_normal(shape)).astype(dtype)

    steps = [(batch(), rng.standard_normal(shape).astype(dtype)) for _ in range(case["steps"])]
    w = rng.uniform(0.5, 2.0, C).astype(dtype) * rng.choice([-1, 1], C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    return steps, batch(), (w, b)


def layer_kwargs(case):
    return dict(eps=case.get("eps", 1e-5), momentum=case.get("momentum", 0.1),
                affine=case.get("affine", True), bias=case.get("bias", True),
                track_running_stats=case.get("track_running_stats", True),
                layout=case["layout"], dtype=np.dtype(case["dtype"]),
                activation=case.get("activation"))


def run_case(case, comm, SyncBatchNorm, out_dir):
    rank = comm.Get_rank()
    lo, hi = slices(case["sizes"])[rank]
    steps, x_eval, (w, b) = case_data(case)
    bn = SyncBatchNorm(case["C"], comm, **layer_kwargs(case))
    if bn.weight is not None:
        bn.weight[...] = w
    if bn.bias is not None:
        bn.bias[...] = b
    out = {}
    for i, (x, dy) in enumerate(steps):
        out[f"y{i}"] = bn(x[lo:hi])
        out[f"dx{i}"] = bn.backward(dy[lo:hi])
        if bn.weight is not None:                           # SGD with the global gradients
            out[f"dw{i}"] = bn.grad_weight
            bn.weight -= case["lr"] * bn.grad_weight
        if bn.bias is not None:
            out[f"db{i}"] = bn.grad_bias
            bn.bias -= case["lr"] * bn.grad_bias
        else:
            assert bn.grad_bias is None
    for k, val in bn.state_dict().items():
        out["state_" + k] = val
    # state_dict / save / load round trip into a fresh layer, which then infers the same
    other = SyncBatchNorm(case["C"], comm, **layer_kwargs(case))
    path = os.path.join(out_dir, f"{case['name']}_state_rank{rank}.npz")
    bn.save(path)
    other.load(path)
    bn.eval()
    other.eval()
    out["y_eval"] = bn(x_eval[lo:hi])
    same = [np.array_equal(a, b) for a, b in zip(bn.state_dict().values(),
                                                  other.state_dict().values())]
    out["roundtrip_equal"] = np.asarray(all(same) and np.array_equal(other(x_eval[lo:hi]),
                                                                     out["y_eval"]))
    return out


def run_errors(case, comm, SyncBatchNorm, out_dir):
    """A bad input on one rank raises there and a RuntimeError on the others (no hang), updates
    nothing anywhere, and the layer works normally afterwards."""
    rank, size = comm.Get_rank(), comm.Get_size()
    steps, _, _ = case_data(case)
    x, dy = steps[0]
    lo, hi = slices(case["sizes"])[rank]
    bn = SyncBatchNorm(case["C"], comm, **layer_kwargs(case))
    seen = []

    def attempt(fn):
        try:
            fn()
            seen.append("ok")
        except Exception as exc:  # recorded for the test
            seen.append(f"{type(exc).__name__}: {exc}")

    bad_rank = size - 1
    # forward: the last rank passes one channel too few (the case is NCHW)
    attempt(lambda: bn(x[lo:hi][:, :-1] if rank == bad_rank else x[lo:hi]))
    before = {k: val.copy() for k, val in bn.state_dict().items()}
    # backward before any successful forward: the same clear error on every rank
    attempt(lambda: bn.backward(dy[lo:hi]))
    # a good forward, then a backward whose dy has the wrong shape on rank 0 only
    attempt(lambda: bn(x[lo:hi]))
    attempt(lambda: bn.backward(dy[lo:hi][:, :-1] if rank == 0 else dy[lo:hi]))
    attempt(lambda: bn.backward(dy[lo:hi]))               # the layer still works afterwards
    # not enough values over all ranks: one sample on rank 0, none elsewhere, 2-D input
    tiny = np.ones((1 if rank == 0 else 0, case["C"]), np.float32)
    bn2 = SyncBatchNorm(case["C"], comm, layout="NHWC")
    attempt(lambda: bn2(tiny))
    attempt(lambda: SyncBatchNorm(case["C"], "COMM_WORLD"))   # not a communicator
    out = {"seen": np.array(seen), "before_nbt": before["num_batches_tracked"],
           "before_running_mean": before["running_mean"]}
    for k, val in bn.state_dict().items():
        out["state_" + k] = val
    out["bn2_nbt"] = np.asarray(bn2.num_batches_tracked)
    return out


def main(plan_path, out_dir):
    from mpi4py import MPI

    from cbn.distributed import SyncBatchNorm

    comm = MPI.COMM_WORLD
    with open(plan_path) as f:
        plan = json.load(f)
    if comm.Get_size() != plan["size"]:
        # e.g. an mpiexec of another MPI than mpi4py's: every process is a singleton
        print(f"mpi_worker: expected {plan['size']} ranks, got comm size {comm.Get_size()} "
              "(mpiexec and mpi4py use different MPI libraries?)", file=sys.stderr)
        sys.exit(3)
    rank = comm.Get_rank()
    for case in plan["cases"]:
        fn = run_errors if case.get("kind") == "errors" else run_case
        try:
            out = fn(case, comm, SyncBatchNorm, out_dir)
        except Exception:
            traceback.print_exc()
            sys.stderr.flush()
            comm.Abort(2)       # the others may be blocked in a collective
        np.savez(os.path.join(out_dir, f"{case['name']}_rank{rank}.npz"), **out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
