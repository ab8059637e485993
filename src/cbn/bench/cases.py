"""What the benchmark measures: ops, layouts, shapes, and the bytes each op must move."""
import argparse

from .._layout import channel_axis, is_channels_last

# train_residual: training forward with a fused residual add and ReLU, y = relu(bn(x) + r) (the
# end of a ResNet block; r is the inputs' dy array); infer_backward: backward through frozen
# statistics (fine-tuning with frozen batch norm).
OPS = ("train", "backward", "infer", "train_residual", "infer_backward")
# ops that read the inputs' dy array (as the gradient, or as train_residual's residual)
DY_OPS = ("backward", "train_residual", "infer_backward")
LAYOUTS = ("NCHW", "NHWC")
MOMENTUM = 0.1
EPS = 1e-5

# Shapes are given in NCHW order (N, C, *spatial) and permuted to (N, *spatial, C) for NHWC.
# 64x64x56x56 float32 is 51 MB: x and y together exceed a 32 MB last-level cache, so that case
# runs from DRAM whatever the timing mode.
DRAM_SHAPE = (64, 64, 56, 56)
DEFAULT_SHAPES = [
    (32, 64, 56, 56), (32, 256, 28, 28), (32, 256, 14, 14), (32, 2048, 7, 7), (256, 1024),
    DRAM_SHAPE,
    (8, 64, 8, 8), (16, 32),  # small: per-call overhead dominates
]
# The alignment sweep's default: mid-size, cache-resident on a 32 MB L3 (25.7 MB float32).
SWEEP_SHAPES = [(32, 64, 56, 56)]
# The contention check of --busy: a mid-size training case (ResNet's first stage, batch 32).
CONTENTION_SHAPE = (32, 64, 56, 56)
# --busy: seconds idle before the idle timings, and of calls beside the busy process before the
# busy ones: longer than cbn's one-thread spell after contention (csrc/contention.c, 0.25 s)
CONTENTION_SETTLE_S = 0.5

# Bytes that must cross memory, in units of x.nbytes: train and infer read x and write y,
# backward reads x and dy and writes dx; train_residual also reads r; infer_backward reads x and
# dy and writes dx.
TRAFFIC = {"train": 2, "backward": 3, "infer": 2, "train_residual": 3, "infer_backward": 3}
# Targets for cbn (out=) / copy on tensors of 4-100 MB (the two fused ops: goals set by the
# traffic, not yet measured).
COPY_TARGETS = {"train": 1.3, "backward": 2.0, "infer": 1.1, "train_residual": 1.6,
                "infer_backward": 2.0}
# Target for the alignment sweep: worst / best time over the placements of one op x layout.
ALIGN_TARGET = 1.25


def layout_shape(shape_nchw, layout):
    """The array shape for `layout` of a shape given in NCHW order."""
    shape = tuple(int(s) for s in shape_nchw)
    if is_channels_last(layout):
        return (shape[0],) + shape[2:] + (shape[1],)
    return shape


def channel_count(shape, layout):
    return shape[channel_axis(layout, len(shape))]


def shape_str(shape):
    return "x".join(str(s) for s in shape)


def parse_shapes(text):
    """'32x64x56x56,256x1024' -> [(32, 64, 56, 56), (256, 1024)]."""
    shapes = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        try:
            shape = tuple(int(s) for s in part.replace("*", "x").split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad shape {part!r}: expected e.g. 32x64x56x56")
        if len(shape) < 2 or min(shape) < 1:
            raise argparse.ArgumentTypeError(
                f"bad shape {part!r}: need at least 2 positive dimensions (N and C)")
        shapes.append(shape)
    if not shapes:
        raise argparse.ArgumentTypeError("no shapes given")
    return shapes
