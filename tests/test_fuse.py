"""cnncore.layers.fuse: BatchNorm folded into the convolution before it, ReLU and residual
add + ReLU fused; the fused copy computes what the eval-mode model computes."""

import numpy as np
import pytest

from cnncore import layers as L
from cnncore import zoo
from cnncore.layers import FusedBatchNorm2d, FusedConv2d


def _randomise_batch_norms(model, rng):
    """Non-trivial statistics and affine parameters, so that folding has work to do."""
    for _, layer in model.named_layers():
        if isinstance(layer, L.BatchNorm2d):
            c = layer.num_features
            layer.weight.data[...] = rng.uniform(0.5, 1.5, c)
            layer.bias.data[...] = rng.standard_normal(c) * 0.2
            layer.running_mean[...] = rng.standard_normal(c) * 0.2
            layer.running_var[...] = rng.uniform(0.5, 2.0, c)
    return model


ZOO = {
    "lenet5": lambda d: zoo.lenet5(variant="cifar", dtype=d),
    "alexnet": lambda d: zoo.alexnet(variant="cifar", dtype=d),
    "vgg11_bn": lambda d: zoo.vgg(11, variant="cifar", batch_norm=True, width=8, dtype=d),
    "resnet18": lambda d: zoo.resnet(18, variant="cifar", width=8, dtype=d),
    "resnet50": lambda d: zoo.resnet(50, variant="cifar", width=4, dtype=d),
    "densenet121": lambda d: zoo.densenet(121, variant="cifar", growth_rate=4, dtype=d),
}
TOL = {np.float64: 1e-10, np.float32: 1e-5}


def _heads_nonzero(model, rng):
    # the zoo's classifiers start at zero: give the last Linear weights, or every output is 0
    head = [layer for _, layer in model.named_layers() if isinstance(layer, L.Linear)][-1]
    head.weight.data[...] = rng.standard_normal(head.weight.shape) * 0.1


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(ZOO))
def test_fused_zoo_model_matches_eval(name, dtype, rng):
    model = ZOO[name](dtype)
    _randomise_batch_norms(model, rng)
    _heads_nonzero(model, rng)
    x = rng.standard_normal((2,) + model.input_shape).astype(dtype)
    model.train()
    model.forward(x)  # leaves caches and updates the running stats: fuse must not care
    model.eval()
    state = model.state_dict()
    fused = model.fuse()
    want = model.forward(x)
    got = fused.forward(x)
    assert got.dtype == dtype
    rel = np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)
    assert rel <= TOL[dtype], f"{name}: relative difference {rel}"
    # every BatchNorm after a convolution is gone
    n_bn = sum(isinstance(m, L.BatchNorm2d) and not isinstance(m, FusedBatchNorm2d)
               for _, m in fused.named_layers())
    if name in ("vgg11_bn", "resnet18", "resnet50"):
        assert n_bn == 0
    assert not any(isinstance(m, L.Dropout) for _, m in fused.named_layers())
    # the original is untouched and still trains
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, state[k])
    assert not any(isinstance(m, (FusedConv2d, FusedBatchNorm2d))
                   for _, m in model.named_layers())
    model.train()
    y = model.forward(x)
    assert model.backward(np.ones_like(y)).shape == x.shape


def test_fold_batch_norm_formula(rng):
    conv = L.Conv2d(3, 4, 3, padding=1, dtype=np.float64, rng=0)
    conv.bias.data[...] = rng.standard_normal(4)
    bn = _randomise_batch_norms(L.Sequential(L.BatchNorm2d(4, dtype=np.float64)), rng)[0]
    fused = L.fusion.fold_batch_norm(conv, bn)
    a = bn.weight.data / np.sqrt(bn.running_var + bn.eps)
    np.testing.assert_allclose(fused.weight.data, conv.weight.data * a[:, None, None, None])
    np.testing.assert_allclose(fused.bias.data,
                               (conv.bias.data - bn.running_mean) * a + bn.bias.data)


def test_sequential_rewrites(rng):
    d = np.float64
    model = L.Sequential(
        L.Conv2d(3, 4, 3, padding=1, dtype=d), L.BatchNorm2d(4, dtype=d), L.ReLU(),   # conv+bn+relu
        L.Conv2d(4, 4, 1, bias=False, dtype=d), L.BatchNorm2d(4, dtype=d),            # conv+bn
        L.BatchNorm2d(4, dtype=d), L.ReLU(),                                          # bn+relu
        L.Residual([L.Conv2d(4, 4, 3, padding=1, dtype=d), L.ReLU()]), L.ReLU(),      # add+relu
        L.Dropout(0.5), L.Conv2d(4, 2, 1, dtype=d), L.ReLU(),                         # conv+relu
        L.Conv2d(2, 2, 1, groups=2, dtype=d), L.BatchNorm2d(2, dtype=d))              # groups
    _randomise_batch_norms(model, rng)
    fused = L.fuse(model)
    kinds = [type(m).__name__ for m in fused]
    assert kinds == ["FusedConv2d", "FusedConv2d", "FusedBatchNorm2d", "Residual",
                     "FusedConv2d", "FusedConv2d"]
    assert [m.relu for m in fused if hasattr(m, "relu")] == [True, False, True, True, False]
    assert fused[3]._relu and type(fused[3].body[0]).__name__ == "FusedConv2d"
    x = rng.standard_normal((2, 3, 5, 6))
    np.testing.assert_allclose(fused.forward(x), model.eval().forward(x), rtol=1e-12,
                               atol=1e-12)
    assert "inference-only" in repr(fused)


def test_fused_model_is_inference_only(rng):
    model = zoo.resnet(18, variant="cifar", width=4, dtype=np.float64)
    fused = model.fuse()
    assert model.training  # the original keeps its mode
    assert not fused.training
    x = rng.standard_normal((1, 3, 32, 32))
    y = fused.forward(x)
    with pytest.raises(RuntimeError, match="inference-only.*backward"):
        fused.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match="inference-only.*train mode"):
        fused.train()
    with pytest.raises(RuntimeError, match="inference-only"):
        L.fuse(L.Sequential(L.Conv2d(1, 1, 1), L.BatchNorm2d(1))).train()
    fused.eval()  # allowed
    with pytest.raises(TypeError, match="fuse: expected a cnncore Layer"):
        L.fuse(np.zeros(3))


def test_residual_block_add_relu_gradients_unchanged(rng):
    # training-mode blocks add and apply ReLU in one pass too; backward must be what
    # add -> ReLU layer gives
    d = np.float64
    block = zoo.basic_block(4, 8, stride=2, dtype=d)
    _randomise_batch_norms(block, rng)
    x = rng.standard_normal((3, 4, 6, 6))
    g = rng.standard_normal((3, 8, 3, 3))
    y = block.forward(x)
    gx = block.backward(g)
    z = None
    h = x
    for layer in block._body:
        h = layer.forward(h)
    z = h + block._sc.forward(x)
    np.testing.assert_allclose(y, np.maximum(z, 0), rtol=1e-13, atol=1e-13)
    gz = g * (z > 0)
    gb = gz
    for layer in reversed(block._body):
        gb = layer.backward(gb)
    np.testing.assert_allclose(gx, gb + block._sc.backward(gz), rtol=1e-12, atol=1e-12)


def _unfused_pairs(monkeypatch):
    from cnncore.layers import containers
    monkeypatch.setattr(containers, "_bn_relu_pair", lambda bn, relu: False)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["vgg11_bn", "resnet18", "resnet50", "densenet121"])
def test_eval_bn_relu_pairs_run_as_one_pass_with_the_same_results(name, dtype, rng,
                                                                 monkeypatch):
    """An eval-mode Sequential (and a residual block's body) runs BatchNorm2d -> ReLU as one
    pass: the same outputs, input gradients and parameter gradients, bit for bit, as the two
    layers one after the other."""
    model = _randomise_batch_norms(ZOO[name](dtype), rng)
    _heads_nonzero(model, rng)
    model.eval()
    x = rng.standard_normal((2, 3, 32, 32)).astype(dtype)
    calls = []
    original = L.BatchNorm2d._forward_eval_relu
    monkeypatch.setattr(L.BatchNorm2d, "_forward_eval_relu",
                        lambda self, x: calls.append(self) or original(self, x))
    y = model.forward(x)
    assert calls, "no BatchNorm2d -> ReLU pair ran as one pass"
    g = rng.standard_normal(y.shape).astype(dtype)
    gx = model.backward(g)
    grads = {n: p.grad.copy() for n, p in model.named_parameters()}
    model.zero_grad()
    _unfused_pairs(monkeypatch)
    calls.clear()
    np.testing.assert_array_equal(model.forward(x), y)
    assert not calls
    np.testing.assert_array_equal(model.backward(g), gx)
    for n, p in model.named_parameters():
        np.testing.assert_array_equal(p.grad, grads[n], err_msg=n)


def test_bn_relu_pairs_only_in_eval_and_unpatched(rng, monkeypatch):
    """Training mode, a subclass, or a forward replaced on the instance (SyncBatchNorm's
    conversion, a profiler's wrapper) keep the layers' own forward calls."""
    calls = []
    original = L.BatchNorm2d._forward_eval_relu
    monkeypatch.setattr(L.BatchNorm2d, "_forward_eval_relu",
                        lambda self, x: calls.append(self) or original(self, x))
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    model = L.Sequential(L.BatchNorm2d(3), L.ReLU())
    model.forward(x)
    assert not calls  # training mode: batch statistics
    model.eval()
    model.forward(x)
    assert len(calls) == 1
    seen = []
    model[1].forward = lambda x_: seen.append(1) or L.ReLU.forward(model[1], x_)
    calls.clear()
    model.forward(x)
    assert not calls and seen == [1]

    class MyReLU(L.ReLU):
        pass
    model = L.Sequential(L.BatchNorm2d(3), MyReLU()).eval()
    model.forward(x)
    assert not calls
