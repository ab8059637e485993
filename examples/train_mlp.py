"""Train a small NumPy MLP with and without cbn.BatchNorm, same data, same seeds.

The data are three interleaved spirals generated in code. The two models are identical except
that the one with batch norm puts a `cbn.BatchNorm(activation="relu")` (normalize, scale, shift
and ReLU in one pass) after each hidden linear layer where the other has a plain ReLU. At a
learning rate too high for the plain model, it diverges or stalls while the batch-norm model
trains: batch norm keeps every layer's inputs at unit scale whatever the weights grow to.

    python examples/train_mlp.py                    # lr 2.5, 40 epochs, prints both curves
    python examples/train_mlp.py --lr 0.1 --plot curves.png
    python examples/train_mlp.py --quick
"""
import argparse
import sys

import numpy as np

import cbn


def spirals(n_per_class=300, classes=3, noise=0.2, seed=0):
    """(x, labels): `classes` interleaved spiral arms in 2-D, float32."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k in range(classes):
        r = np.linspace(0.05, 1.0, n_per_class)
        t = np.linspace(k * 4.0, (k + 1) * 4.0, n_per_class) + rng.normal(0, noise, n_per_class)
        xs.append(np.stack([r * np.sin(t), r * np.cos(t)], axis=1))
        ys.append(np.full(n_per_class, k))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


class Linear:
    def __init__(self, n_in, n_out, rng):
        self.W = (rng.normal(size=(n_out, n_in)) * np.sqrt(2.0 / n_in)).astype(np.float32)
        self.b = np.zeros(n_out, np.float32)

    def forward(self, x):
        self.x = x
        return x @ self.W.T + self.b

    def backward(self, dy, lr):
        dx = dy @ self.W
        self.W -= lr * (dy.T @ self.x)
        self.b -= lr * dy.sum(axis=0)
        return dx


class ReLU:
    def forward(self, x):
        self.mask = x > 0
        return np.where(self.mask, x, np.float32(0))

    def backward(self, dy, lr):
        return np.where(self.mask, dy, np.float32(0))


class BatchNormReLU:
    """cbn.BatchNorm with the ReLU fused, plus an SGD step on its weight and bias."""

    def __init__(self, n):
        self.bn = cbn.BatchNorm(n, activation="relu")

    def forward(self, x):
        return self.bn(x)

    def backward(self, dy, lr):
        dx = self.bn.backward(dy)
        self.bn.weight -= lr * self.bn.grad_weight
        self.bn.bias -= lr * self.bn.grad_bias
        return dx


def make_model(batch_norm, hidden=64, seed=1):
    rng = np.random.default_rng(seed)   # same weights for both models
    act = (lambda n: BatchNormReLU(n)) if batch_norm else (lambda n: ReLU())
    return [Linear(2, hidden, rng), act(hidden), Linear(hidden, hidden, rng), act(hidden),
            Linear(hidden, 3, rng)]


def cross_entropy(logits, labels):
    """Mean loss and its gradient with respect to the logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = len(labels)
    loss = -np.log(np.maximum(p[np.arange(n), labels], 1e-30)).mean()
    p[np.arange(n), labels] -= 1.0
    return float(loss), (p / n).astype(np.float32)


def evaluate(model, x, labels):
    for layer in model:
        if isinstance(layer, BatchNormReLU):
            layer.bn.eval()
    h = x
    for layer in model:
        h = layer.forward(h)
    for layer in model:
        if isinstance(layer, BatchNormReLU):
            layer.bn.train()
    loss, _ = cross_entropy(h, labels)
    return loss, float((h.argmax(axis=1) == labels).mean())


def train(batch_norm, lr, epochs, batch=64, seed=2, x=None, labels=None):
    """Train one model; returns the per-epoch (loss, accuracy) on the whole data set."""
    if x is None:
        x, labels = spirals()
    model = make_model(batch_norm)
    rng = np.random.default_rng(seed)   # same batches for both models
    history = []
    with np.errstate(all="ignore"):     # the plain model may overflow at a high rate
        for _ in range(epochs):
            order = rng.permutation(len(x))
            for i in range(0, len(x) - batch + 1, batch):
                idx = order[i:i + batch]
                h = x[idx]
                for layer in model:
                    h = layer.forward(h)
                _, grad = cross_entropy(h, labels[idx])
                for layer in reversed(model):
                    grad = layer.backward(grad, lr)
            loss, acc = evaluate(model, x, labels)
            history.append((loss if np.isfinite(loss) else float("inf"), acc))
    return history


def plot(histories, path, lr):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed (pip install matplotlib): no plot written")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, h in histories.items():
        loss = [min(l, 10.0) for l, _ in h]
        ax.plot(range(1, len(h) + 1), loss, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training-set loss (clipped at 10)")
    ax.set_title(f"3-class spirals, MLP 2-64-64-3, SGD lr={lr}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--lr", type=float, default=2.5)
    ap.add_argument("--quick", action="store_true", help="10 epochs")
    ap.add_argument("--plot", metavar="PATH", help="write a PNG of both loss curves")
    args = ap.parse_args(argv)
    epochs = 10 if args.quick else args.epochs
    x, labels = spirals()
    histories = {"plain MLP": train(False, args.lr, epochs, x=x, labels=labels),
                 "MLP + cbn.BatchNorm": train(True, args.lr, epochs, x=x, labels=labels)}
    print(f"epoch  {'plain loss':>10s} {'acc':>5s}   {'with BN loss':>12s} {'acc':>5s}   (lr={args.lr})")
    for e, ((lp, ap_), (lb, ab)) in enumerate(zip(*histories.values()), 1):
        print(f"{e:5d}  {lp:10.4f} {ap_:5.2f}   {lb:12.4f} {ab:5.2f}")
    if args.plot:
        plot(histories, args.plot, args.lr)
    return histories


if __name__ == "__main__":
    main(sys.argv[1:])
