"""Benchmark report for cbn: ``python -m cbn.bench`` (``--help`` for the options).

For every shape x layout x op (training forward, backward, inference) it times, interleaved
round-robin in one loop so that a noisy machine hits every candidate alike, cbn (with ``out=``
and allocating), naive NumPy, PyTorch, JAX and ONNX Runtime when installed, and a plain copy of
x on the same threads (the yardstick), on arrays allocated the way NumPy code allocates them.
``--align-sweep`` times cbn with its arrays placed at every 16-byte offset instead; ``--busy``
measures beside a spinning process; ``--isolated`` times PyTorch in a process of its own.

One module per job:

  cases       ops, layouts, shapes, traffic and targets
  arrays      input allocation (as NumPy code does) and placed buffers for the sweep
  peers       what is timed for each implementation, in this process
  kernels     op -> the C kernel call through cbn._core (the per-call cost section)
  optional_peers  JAX and ONNX Runtime, run only inside a worker process
  worker      peers in processes of their own (parent-side proxy and worker loop)
  timing      the interleaved timing engine, cache flusher
  monitor     other processes' CPU load; the --busy spinner
  measure     one case / per-call cost / bandwidth / contention -> JSON-ready records
  sweep       --align-sweep
  report, plot  printed report and bar chart
  __main__    the command line

The pytest-benchmark suite in ``bench/`` uses `make_inputs`, `make_candidates` and friends
re-exported here.
"""
from .arrays import empty_at, make_inputs, settle_allocator
from .cases import DEFAULT_SHAPES, DRAM_SHAPE, LAYOUTS, OPS, TRAFFIC, layout_shape, shape_str
from .kernels import KERNEL_CALLS
from .peers import (IMPLS, import_torch, main_output, make_candidates, max_rel_error,
                    set_torch_threads)
from .report import cpu_model


def main(argv=None):
    from .__main__ import main as _main
    return _main(argv)


__all__ = ["DEFAULT_SHAPES", "DRAM_SHAPE", "IMPLS", "KERNEL_CALLS", "LAYOUTS", "OPS", "TRAFFIC",
           "cpu_model", "empty_at", "import_torch", "layout_shape", "main", "main_output",
           "make_candidates", "make_inputs", "max_rel_error", "set_torch_threads",
           "settle_allocator", "shape_str"]
