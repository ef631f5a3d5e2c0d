"""One LeNet-5 training step, written three ways.

The network (MNIST-sized, 1x28x28 inputs, 10 classes)::

    conv 5x5 1->6 pad 2, relu, maxpool 2
    conv 5x5 6->16,      relu, maxpool 2
    flatten (400), linear 400->120, relu, linear 120->84, relu, linear 84->10
    softmax cross-entropy, plain SGD update ``p -= lr * grad``

- :func:`functional_step`: the explicit forward / backward chain over a module with the
  :mod:`cnncore.functional` API -- used for cnncore and, unchanged, for
  :mod:`cnncore.reference`; max pooling keeps its argmax indices for the backward, as
  PyTorch does;
- :func:`layers_step`: the same network from :mod:`cnncore.layers` (only when that
  package provides the layer classes);
- :func:`torch_step`: ``torch.nn`` modules, ``F.cross_entropy``, ``loss.backward()`` and
  ``torch.optim.SGD``.

All three start from the same weights (:func:`init_params`) and the same batch.
"""

import numpy as np

from .shapes import conv_flops

__all__ = ["PARAM_SHAPES", "init_params", "make_batch", "step_flops", "functional_step",
           "layers_available", "layers_step", "torch_step"]

#: Parameter name -> shape, in network order (PyTorch layout: weights ``(out, in, ...)``).
PARAM_SHAPES = {
    "w1": (6, 1, 5, 5), "b1": (6,),
    "w2": (16, 6, 5, 5), "b2": (16,),
    "w3": (120, 400), "b3": (120,),
    "w4": (84, 120), "b4": (84,),
    "w5": (10, 84), "b5": (10,),
}

LR = 0.01


def init_params(dtype=np.float32, seed=0):
    """He-uniform weights and small uniform biases, seeded: ``{name: ndarray}``."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in PARAM_SHAPES.items():
        if name.startswith("w"):
            fan_in = int(np.prod(shape[1:]))
            bound = np.sqrt(6.0 / fan_in)
        else:
            bound = 0.05
        params[name] = rng.uniform(-bound, bound, shape).astype(dtype)
    return params


def make_batch(n, dtype=np.float32, seed=0):
    """A seeded batch: images ``(n, 1, 28, 28)`` and int64 labels ``(n,)`` in ``[0, 10)``."""
    rng = np.random.default_rng([seed, n])
    return (rng.standard_normal((n, 1, 28, 28)).astype(dtype),
            rng.integers(0, 10, n).astype(np.int64))


def step_flops(n):
    """FLOPs of one training step on a batch of ``n``: 3x the forward FLOPs of the two
    convolutions and three linear layers (forward + input gradient + weight gradient;
    element-wise ops, pooling and the loss are not counted)."""
    fwd = (conv_flops(n, 1, 6, 28, 28, 5, 5) + conv_flops(n, 6, 16, 10, 10, 5, 5)
           + 2 * n * (400 * 120 + 120 * 84 + 84 * 10))
    return 3 * fwd


def functional_step(F, params, x, labels, lr=LR, n_threads=None):
    """A zero-argument step function: forward, loss, backward and SGD on ``params``
    (updated in place) through the functional module ``F``; each call returns the loss.

    Parameters
    ----------
    F : module
        :mod:`cnncore.functional` or :mod:`cnncore.reference`.
    params : dict
        From :func:`init_params` (a private copy: it is updated in place).
    x, labels : ndarray
    lr : float
    n_threads : int, optional
        Passed to every call (the reference ignores it).
    """
    p = params
    t = n_threads

    def step():
        n = x.shape[0]
        # forward
        z1 = F.conv2d(x, p["w1"], p["b1"], 1, 2, n_threads=t)
        a1 = F.relu(z1, n_threads=t)
        q1, i1 = F.max_pool2d(a1, 2, 2, return_indices=True, n_threads=t)
        z2 = F.conv2d(q1, p["w2"], p["b2"], 1, 0, n_threads=t)
        a2 = F.relu(z2, n_threads=t)
        q2, i2 = F.max_pool2d(a2, 2, 2, return_indices=True, n_threads=t)
        f = q2.reshape(n, -1)
        z3 = F.linear(f, p["w3"], p["b3"], n_threads=t)
        a3 = F.relu(z3, n_threads=t)
        z4 = F.linear(a3, p["w4"], p["b4"], n_threads=t)
        a4 = F.relu(z4, n_threads=t)
        z5 = F.linear(a4, p["w5"], p["b5"], n_threads=t)
        loss, g = F.softmax_cross_entropy(z5, labels, n_threads=t)
        # backward
        grads = {}
        g, grads["w5"], grads["b5"] = F.linear_backward(g, a4, p["w5"], n_threads=t)
        g = F.relu_backward(g, z4, n_threads=t)
        g, grads["w4"], grads["b4"] = F.linear_backward(g, a3, p["w4"], n_threads=t)
        g = F.relu_backward(g, z3, n_threads=t)
        g, grads["w3"], grads["b3"] = F.linear_backward(g, f, p["w3"], n_threads=t)
        g = F.max_pool2d_backward(g.reshape(q2.shape), a2, 2, 2, indices=i2, n_threads=t)
        g = F.relu_backward(g, z2, n_threads=t)
        g, grads["w2"], grads["b2"] = F.conv2d_backward(g, q1, p["w2"], 1, 0, n_threads=t)
        g = F.max_pool2d_backward(g, a1, 2, 2, indices=i1, n_threads=t)
        g = F.relu_backward(g, z1, n_threads=t)
        _, grads["w1"], grads["b1"] = F.conv2d_backward(g, x, p["w1"], 1, 2, n_threads=t,
                                                        need_grad_x=False)  # as torch
        # SGD
        for name, grad in grads.items():
            p[name] -= lr * grad
        return float(loss)

    return step


_LAYER_NAMES = ("Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear", "Sequential")


def layers_available():
    """:mod:`cnncore.layers` if it imports and has the classes LeNet needs, else None."""
    try:
        from .. import layers
    except Exception:
        return None
    if all(hasattr(layers, n) for n in _LAYER_NAMES):
        return layers
    return None


def _make(cls, *args, dtype=None, **kwargs):
    """Construct a layer, passing ``dtype=`` only if the class accepts it."""
    try:
        return cls(*args, dtype=dtype, **kwargs)
    except TypeError:
        return cls(*args, **kwargs)


def layers_step(L, F, params, x, labels, lr=LR):
    """A zero-argument step function over a :mod:`cnncore.layers` ``Sequential``: zero the
    gradients, ``forward``, loss (``F.softmax_cross_entropy``), ``backward``, SGD on every
    ``Parameter``. The layers take their thread count from ``cnncore.set_num_threads``."""
    dt = x.dtype
    model = L.Sequential(
        _make(L.Conv2d, 1, 6, 5, padding=2, dtype=dt), L.ReLU(), L.MaxPool2d(2),
        _make(L.Conv2d, 6, 16, 5, dtype=dt), L.ReLU(), L.MaxPool2d(2), L.Flatten(),
        _make(L.Linear, 400, 120, dtype=dt), L.ReLU(),
        _make(L.Linear, 120, 84, dtype=dt), L.ReLU(),
        _make(L.Linear, 84, 10, dtype=dt))
    plist = list(model.parameters())
    values = list(params.values())
    if len(plist) == len(values) and all(q.data.shape == v.shape for q, v in zip(plist, values)):
        for q, v in zip(plist, values):
            q.data[...] = v

    def step():
        for q in plist:
            q.grad.fill(0)
        logits = model.forward(x)
        loss, g = F.softmax_cross_entropy(logits, labels)
        model.backward_params(g)  # no input gradient, as in torch
        for q in plist:
            q.data -= lr * q.grad
        return float(loss)

    return step


def torch_step(torch, params, x, labels, lr=LR):
    """A zero-argument step function with ``torch.nn``: ``opt.zero_grad()``,
    ``F.cross_entropy(model(x), y).backward()``, ``torch.optim.SGD.step()``."""
    nn = torch.nn
    dtype = torch.float64 if x.dtype == np.float64 else torch.float32
    model = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    ).to(dtype)
    with torch.no_grad():
        for q, v in zip(model.parameters(), params.values()):
            q.copy_(torch.from_numpy(v))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(labels)
    cross_entropy = nn.functional.cross_entropy

    def step():
        opt.zero_grad()
        loss = cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
        return loss.item()

    return step
