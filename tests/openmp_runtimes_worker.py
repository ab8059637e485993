"""Worker of tests/test_openmp_runtimes.py: imports torch and cbn in the order given, then
records, as JSON, what the OpenMP runtimes of the process do (the test asserts on it).

    python openmp_runtimes_worker.py {torch-first|cbn-first} INPUTS.npz OUT_DIR

OUT_DIR/report.json: the OpenMP libraries mapped and those threadpoolctl lists, which of them
cbn and torch call, how many threads a cbn call keeps busy (per-thread CPU time from
/proc/self/task), thread counts under threadpool_limits(1). OUT_DIR/results.npz: cbn's results
on INPUTS with torch imported and its pool started, for the bit-identity check.

A thread "is busy" during a call when its CPU time grows; OMP_WAIT_POLICY=passive (set by the
test) keeps idle pool threads asleep instead of spinning, so only working threads count.
"""
import ctypes
import json
import os
import sys

order, inputs_path, out_dir = sys.argv[1:4]
if order == "torch-first":
    import torch
    import cbn
else:
    import cbn
    import torch
import numpy as np
import threadpoolctl
from cbn import _core

torch.get_num_threads()   # torch sets its runtime's default on first use: do it now
report = {"order": order, "pid": os.getpid(), "cbn_file": cbn.__file__}


def openmp_libraries():
    """Real paths of the OpenMP runtimes threadpoolctl lists, in its order."""
    return [os.path.realpath(d["filepath"]) for d in threadpoolctl.threadpool_info()
            if d["user_api"] == "openmp"]


def mapped_openmp_libraries():
    """Real paths of every libgomp/libomp/libiomp mapped into this process."""
    found = set()
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1]
            name = os.path.basename(path)
            if path.startswith("/") and name.startswith(("libgomp", "libomp", "libiomp")):
                found.add(os.path.realpath(path))
    return sorted(found)


def cpu_ticks():
    """Thread id -> user + system CPU time (clock ticks) of every thread of this process."""
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:   # the thread ended meanwhile
            continue
        ticks[tid] = int(fields[11]) + int(fields[12])   # utime, stime (fields 14 and 15)
    return ticks


def busy_threads(work):
    """{thread id: CPU ticks used} of the threads whose CPU time grew while work() ran (the
    calling thread included)."""
    before = cpu_ticks()
    work()
    after = cpu_ticks()
    return {t: v - before.get(t, 0) for t, v in after.items() if v > before.get(t, 0)}


data = np.load(inputs_path)
x, dy = data["x"], data["dy"]
N, C, H, W = x.shape


def planned_threads(n_threads):
    """Threads a training forward on x plans for a request of n_threads (after cbn's clamp to
    the CPUs offered, and to fewer threads for small inputs)."""
    return _core.plan_path(N, C, H * W, False, x.dtype == np.float32, "train",
                           cbn._threads.resolve_threads(n_threads))["n_threads"]


def cbn_work(n_threads, repeat=30):
    def work():
        for _ in range(repeat):
            cbn.batch_norm_train(x, n_threads=n_threads)
    return work


def torch_work():
    t = torch.from_numpy(x)
    for _ in range(10):
        torch.nn.functional.batch_norm(t, None, None, training=True)


# which runtime each library calls: give each runtime another thread count and ask both
libs = openmp_libraries()
report["threadpoolctl"] = libs
report["mapped"] = mapped_openmp_libraries()
originals = [d["num_threads"] for d in threadpoolctl.threadpool_info() if d["user_api"] == "openmp"]
marks = [3, 1][:len(libs)] if len(libs) <= 2 else list(range(len(libs), 0, -1))
for path, mark in zip(libs, marks):
    ctypes.CDLL(path).omp_set_num_threads(mark)
cbn_mark, torch_mark = cbn.get_num_threads(), torch.get_num_threads()
report["cbn_runtime"] = libs[marks.index(cbn_mark)] if cbn_mark in marks else None
report["torch_runtime"] = libs[marks.index(torch_mark)] if torch_mark in marks else None
for path, n in zip(libs, originals):
    ctypes.CDLL(path).omp_set_num_threads(n)
report["default_threads"] = {"cbn": cbn.get_num_threads(), "torch": torch.get_num_threads()}

# n_threads honoured, before and after torch started its pool
report["n2_planned"] = planned_threads(2)
report["n2_busy_before_torch"] = busy_threads(cbn_work(2))
report["torch_busy"] = busy_threads(torch_work)
report["n2_busy_after_torch"] = busy_threads(cbn_work(2))
report["n1_busy"] = busy_threads(cbn_work(1))

# threadpool_limits(1) reaches both libraries' defaults
with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
    report["limited"] = {"cbn": cbn.get_num_threads(), "torch": torch.get_num_threads(),
                         "cbn_default_busy": busy_threads(cbn_work(None)),
                         "n2_planned": planned_threads(2),
                         "n2_busy": busy_threads(cbn_work(2))}
report["after_limits"] = {"cbn": cbn.get_num_threads(), "torch": torch.get_num_threads()}

# torch.set_num_threads sets its runtime's default: cbn's too when they share the runtime
torch_default = torch.get_num_threads()
torch.set_num_threads(1)
report["cbn_after_torch_set_1"] = cbn.get_num_threads()
torch.set_num_threads(torch_default)

# results with torch imported and its pool running, for the bit-identity check
torch_work()
results = {}
for n in (1, 2):
    y, m, s = cbn.batch_norm_train(x, n_threads=n)
    dx, dw, db = cbn.batch_norm_backward(dy, x, m, s, n_threads=n)
    results.update({f"y{n}": y, f"mean{n}": m, f"invstd{n}": s, f"dx{n}": dx, f"dw{n}": dw,
                    f"db{n}": db})
np.savez(os.path.join(out_dir, "results.npz"), **results)
with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(report, f, indent=1)
