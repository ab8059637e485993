"""cbn: fast, exact batch normalization for NumPy on the CPU (C + OpenMP kernels).

Functions: `batch_norm_train`, `batch_norm_backward`, `batch_norm_infer`,
`batch_norm_infer_backward` (gradients through frozen statistics), `fold_scale_shift`;
threads: `set_num_threads`, `get_num_threads`, `openmp_enabled`, `set_contention_fallback`;
memory: `release_memory`, `set_output_cache`; the CPU level the kernels run at: `cpu_level` (CBN_CPU_LEVEL forces one
at import); the layer: `BatchNorm` (any rank) and `BatchNorm1d`/`BatchNorm2d`/`BatchNorm3d` (PyTorch's rank
checks). The float64 NumPy reference implementation of the same formulas is `cbn.reference`.
"""
from ._cpu import cpu_level  # first: chooses the kernels' CPU level (CBN_CPU_LEVEL)
from ._alloc import release_memory, set_output_cache
from ._api import (batch_norm_backward, batch_norm_infer, batch_norm_infer_backward,
                   batch_norm_train, fold_scale_shift)
from ._threads import get_num_threads, openmp_enabled, set_contention_fallback, set_num_threads
from .folding import fold_conv, fold_linear
from .layer import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d

__version__ = "0.1.0"


def get_include() -> str:
    """Directory holding cbn.h, for C or Cython code that embeds the kernels (see cbn/cbn.pxd)."""
    import os
    here = os.path.dirname(os.path.abspath(__file__))
    for d in (os.path.join(here, "include"),                         # installed: the wheel's copy
              os.path.join(here, os.pardir, os.pardir, "include")):  # source checkout: src/cbn
        if os.path.isfile(os.path.join(d, "cbn.h")):
            return os.path.normpath(d)
    return os.path.join(here, "include")


__all__ = [
    "batch_norm_train", "batch_norm_backward", "batch_norm_infer", "batch_norm_infer_backward",
    "fold_scale_shift", "BatchNorm",
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
    "fold_linear", "fold_conv",
    "set_num_threads", "get_num_threads", "openmp_enabled", "set_contention_fallback",
    "release_memory", "set_output_cache",
    "get_include",
    "cpu_level",
    "__version__",
]
