"""Type aliases of the public API's annotations (one place, so every signature says the same).

Arrays that cbn reads are ``ArrayLike`` where the functions accept anything ``np.asarray``
takes; arrays it writes into (``out=``, the running statistics) must be ndarrays. Results are
float ndarrays of x's dtype.
"""
from typing import Any, Literal, Optional, SupportsIndex

import numpy as np
from numpy.typing import NDArray

# what cbn returns and writes into: float32 or float64 arrays
FloatArray = NDArray[np.floating[Any]]

# the names _layout.LAYOUTS accepts
Layout = Literal["NCHW", "channels_first", "NHWC", "channels_last"]

# the fused activations (_validate.relu)
Activation = Optional[Literal["relu"]]

# n_threads: an int (or anything operator.index takes, e.g. np.int64) or None
Threads = Optional[SupportsIndex]
