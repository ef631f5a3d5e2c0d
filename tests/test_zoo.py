"""cnncore.zoo: the classic networks (parameter counts, shapes, names, forward on 224x224,
save/load, training of the small variants) and the layers and containers they use."""

import os
import subprocess
import sys

import numpy as np
import pytest

from _gradcheck import check_gradient
import cnncore
from cnncore import model as cmodel
from cnncore import zoo
from cnncore.layers import AdaptiveAvgPool2d, Conv2d, ReLU
from cnncore.losses import SoftmaxCrossEntropy
from cnncore.optim import Adam

# Where the cnncore under test was imported from (the installed package, or src/ when the
# tests run on an in-place build): a subprocess must import that same one.
CNNCORE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(cnncore.__file__)))


# ---------------------------------------------------------------------- published counts
@pytest.mark.parametrize("name,kwargs,count", [
    ("lenet5", {}, 61_706),
    ("resnet18", {}, 11_689_512),
    ("resnet34", {}, 21_797_672),
    ("resnet50", {}, 25_557_032),
    ("densenet121", {}, 7_978_856),
    ("alexnet", {"variant": "torchvision"}, 61_100_840),
])
def test_published_parameter_counts(name, kwargs, count):
    model = zoo.get_model(name, seed=None, **kwargs)
    assert model.num_parameters() == count
    assert f"Total params: {count:,}" in model.summary(print_fn=None)


def test_vgg16_parameter_count():
    model = zoo.vgg(16, seed=None)
    assert model.num_parameters() == 138_357_544
    assert len(model.parameters()) == 32
    assert model.output_shape((3, 224, 224)) == (1000,)
    del model


def test_course_alexnet_shapes_and_count():
    model = zoo.alexnet(seed=None)
    assert model.input_shape == (3, 227, 227)
    assert model.num_parameters() == 62_378_344
    text = model.summary(print_fn=None)
    assert "Total params: 62,378,344" in text
    rows = [ln for ln in text.splitlines() if "(None," in ln
            and "(Sequential)" not in ln and "(AlexNet)" not in ln]  # the layers, in order
    shapes = []
    for ln in rows:  # successive output shapes (conv3 and conv4 both give 384x13x13)
        s = ln[ln.index("(None,"):].split(")")[0] + ")"
        if not shapes or shapes[-1] != s:
            shapes.append(s)
    assert shapes == ["(None, 96, 55, 55)", "(None, 96, 27, 27)", "(None, 256, 27, 27)",
                      "(None, 256, 13, 13)", "(None, 384, 13, 13)", "(None, 256, 13, 13)",
                      "(None, 256, 6, 6)", "(None, 9216)", "(None, 4096)", "(None, 1000)"]
    assert model.features[8].out_channels == model.features[10].out_channels == 384
    # two LRN layers, three overlapping pools
    assert text.count("LocalResponseNorm") == 2
    assert sum("MaxPool2d" in ln for ln in rows) == 3
    assert model.features[3].kernel_size == (3, 3) and model.features[3].stride == (2, 2)
    assert sum(type(layer).__name__ == "Dropout" for _, layer in model.named_layers()) == 2


def test_parameter_tensor_counts_follow_torchvision():
    # len(list(torchvision.models.X().parameters()))
    assert len(zoo.resnet(18, seed=None).parameters()) == 62
    assert len(zoo.resnet(50, seed=None).parameters()) == 161
    assert len(zoo.densenet(121, seed=None).parameters()) == 364


def test_torchvision_names():
    r = dict(zoo.resnet(50, width=4, seed=None).named_parameters())
    for key in ["conv1.weight", "bn1.weight", "layer1.0.conv3.weight", "layer1.0.bn3.bias",
                "layer1.0.downsample.0.weight", "layer1.0.downsample.1.weight",
                "layer4.2.conv2.weight", "fc.weight", "fc.bias"]:
        assert key in r, key
    assert "conv1.bias" not in r and "layer1.0.conv1.bias" not in r  # no conv biases
    buffers = dict(zoo.resnet(18, width=4, seed=None).named_buffers())
    assert "layer2.0.downsample.1.running_mean" in buffers and "bn1.running_var" in buffers
    d = dict(zoo.densenet(121, growth_rate=2, seed=None).named_parameters())
    for key in ["features.conv0.weight", "features.norm0.weight",
                "features.denseblock1.denselayer1.norm1.weight",
                "features.denseblock1.denselayer6.conv2.weight",
                "features.transition3.conv.weight", "features.denseblock4.denselayer16.conv1.weight",
                "features.norm5.bias", "classifier.weight"]:
        assert key in d, key
    v = [k for k, _ in zoo.vgg(11, batch_norm=True, width=8, seed=None).named_parameters()]
    assert v[:4] == ["features.0.weight", "features.0.bias", "features.1.weight",
                     "features.1.bias"]
    assert v[-6:] == ["classifier.0.weight", "classifier.0.bias", "classifier.3.weight",
                      "classifier.3.bias", "classifier.6.weight", "classifier.6.bias"]


# ---------------------------------------------------------------------- shapes, variants
def test_cifar_variants_shapes():
    r = zoo.resnet(18, variant="cifar", width=8)
    assert r.input_shape == (3, 32, 32)
    assert "maxpool" not in dict(r.named_children())
    assert r.conv1.kernel_size == (3, 3) and r.conv1.stride == (1, 1)
    assert [r[f"layer{i}"].output_shape(s) for i, s in
            [(1, (8, 32, 32)), (2, (8, 32, 32)), (3, (16, 16, 16)), (4, (32, 8, 8))]] == \
        [(8, 32, 32), (16, 16, 16), (32, 8, 8), (64, 4, 4)]
    assert r.output_shape((3, 32, 32)) == (10,)
    assert zoo.resnet(18, variant="cifar").num_parameters() == 11_173_962
    d = zoo.densenet(121, variant="cifar")
    assert d.features.conv0.kernel_size == (3, 3) and "pool0" not in dict(d.features.named_children())
    assert d.features.denseblock1.denselayer1.conv2.out_channels == 12  # k = 12
    assert d.output_shape((3, 32, 32)) == (10,)
    v = zoo.vgg(16, variant="cifar", batch_norm=True)
    assert v.classifier[0].in_features == 512 and v.classifier[6].out_features == 10
    assert "avgpool" not in dict(v.named_children())
    a = zoo.alexnet(variant="cifar")
    assert a.features.output_shape((3, 32, 32)) == (256, 3, 3)
    assert a.output_shape((3, 32, 32)) == (10,)
    lc = zoo.lenet5(variant="cifar")
    assert lc.input_shape == (3, 32, 32) and lc.output_shape((3, 32, 32)) == (10,)


def test_arguments_and_errors():
    m = zoo.resnet(34, variant="cifar", num_classes=7, in_channels=1, input_size=(40, 48),
                   width=4, dtype=np.float64)
    assert m.input_shape == (1, 40, 48) and m.output_shape(m.input_shape) == (7,)
    assert m.dtype == np.float64
    with pytest.raises(ValueError, match="depth must be one of"):
        zoo.resnet(20)
    with pytest.raises(ValueError, match="unknown variant 'mnist'"):
        zoo.vgg(11, variant="mnist")
    with pytest.raises(ValueError, match="alexnet: input size 32x32 is too small"):
        zoo.alexnet(input_size=32)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        zoo.densenet(121, num_classes=0)
    with pytest.raises(ValueError, match="unknown model 'resnet9'"):
        zoo.get_model("resnet9")
    assert {"lenet5", "alexnet", "vgg16_bn", "resnet18", "densenet121"} <= set(zoo.list_models())
    assert zoo.resnet18 is zoo.MODELS["resnet18"]
    assert zoo.vgg16_bn(variant="cifar", width=8, seed=None).features[1].__class__.__name__ \
        == "BatchNorm2d"


def test_lenet5_is_the_model_module_network():
    a, b = zoo.lenet5(seed=3), cmodel.lenet5(seed=3)
    assert a.to_config() == b.to_config()
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k])
    assert cnncore.lenet5(seed=0).num_parameters() == 61_706


def test_seeds_and_zero_head():
    a = zoo.resnet(18, variant="cifar", width=4, seed=7)
    b = zoo.resnet(18, variant="cifar", width=4, seed=7)
    c = zoo.resnet(18, variant="cifar", width=4, seed=None)
    for (k, p), (_, q), (_, r) in zip(a.named_parameters(), b.named_parameters(),
                                      c.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data)
        if k == "conv1.weight":
            assert not np.array_equal(p.data, r.data)
    assert not a.fc.weight.data.any()  # the classifier starts at zero: loss ln(10)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert SoftmaxCrossEntropy()(a.forward(x), np.array([1, 2])) == pytest.approx(np.log(10))


# ---------------------------------------------------------------------- forward at 224
@pytest.mark.parametrize("name,kwargs", [("resnet18", {}), ("resnet50", {}), ("densenet121", {}),
                                         ("alexnet", {})])
def test_imagenet_forward_one_image(name, kwargs):
    model = zoo.get_model(name, seed=0, **kwargs).eval()
    x = np.random.default_rng(1).standard_normal((1,) + model.input_shape).astype(np.float32)
    y = model.forward(x)
    assert y.shape == (1, 1000) and y.dtype == np.float32 and np.all(np.isfinite(y))


# ---------------------------------------------------------------------- containers
def test_named_sequential_api():
    from cnncore.zoo import NamedSequential
    m = NamedSequential({"conv": Conv2d(1, 2, 3), "act": ReLU()})
    assert m.conv is m["conv"] is m[0] and m.act is m[-1] and len(m) == 2
    m.append(ReLU(), name="act2")
    assert m.get_config() == {"names": ["conv", "act", "act2"]}
    assert "(conv): Conv2d(1, 2" in repr(m)
    with pytest.raises(AttributeError):
        m.nope
    with pytest.raises(KeyError, match="no child named 'nope'"):
        m["nope"]
    with pytest.raises(ValueError, match="must differ"):
        NamedSequential(ReLU(), ReLU(), names=["a", "a"])
    with pytest.raises(ValueError, match="without dots"):
        NamedSequential(ReLU(), names=["a.b"])
    assert NamedSequential(ReLU()).get_config() == {}


def _fd_check_input_gradient(model, x, rng, n=6):
    """Central differences on ``n`` random input elements (float64, eval mode)."""
    y = model.forward(x)
    g = rng.standard_normal(y.shape)
    gx = model.backward(g)
    flat = x.reshape(-1)
    for i in rng.choice(flat.size, n, replace=False):
        old, eps = flat[i], 1e-6
        flat[i] = old + eps
        plus = np.sum(model.forward(x) * g)
        flat[i] = old - eps
        minus = np.sum(model.forward(x) * g)
        flat[i] = old
        np.testing.assert_allclose(gx.reshape(-1)[i], (plus - minus) / (2 * eps), rtol=1e-5,
                                   atol=1e-7)


@pytest.mark.parametrize("build", [
    lambda: zoo.resnet(18, variant="cifar", width=2, input_size=8, dtype=np.float64),
    lambda: zoo.resnet(50, variant="cifar", width=2, input_size=8, dtype=np.float64),
    lambda: zoo.densenet(121, variant="cifar", growth_rate=2, bn_size=1, input_size=8,
                         dtype=np.float64),
], ids=["resnet18", "resnet50", "densenet121"])
def test_whole_model_input_gradient_finite_differences(build, rng):
    model = build().eval()  # eval: BatchNorm is a fixed affine map, the loss is smooth
    for _, layer in model.named_layers():
        if hasattr(layer, "running_var"):
            layer.set_buffer("running_var", rng.uniform(0.5, 2, layer.num_features))
            layer.bias.data[...] = rng.normal(0, 0.3, layer.num_features)
    head = model.fc if hasattr(model, "fc") else model.classifier
    head.weight.data[...] = rng.normal(0, 0.3, head.weight.shape)  # not the zero init
    x = rng.standard_normal((2, 3, 8, 8))
    _fd_check_input_gradient(model, x, rng)


def test_whole_model_parameter_gradient_train_mode(rng):
    """Training-mode BatchNorm (batch statistics) inside residual blocks: the gradient of one
    convolution weight against central differences."""
    model = zoo.resnet(18, variant="cifar", width=2, input_size=8, dtype=np.float64)
    model.fc.weight.data[...] = rng.normal(0, 0.3, model.fc.weight.shape)
    x = rng.standard_normal((3, 3, 8, 8))
    w = model.layer2[0].conv1.weight
    y = model.forward(x)
    g = rng.standard_normal(y.shape)
    model.zero_grad()
    model.backward(g)

    def loss_of(wdata):
        w.data[...] = wdata
        return model.forward(x)

    check_gradient(loss_of, [w.data.copy()], 0, w.grad.copy(), g, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("hw,out", [((5, 7), (3, 4)), ((2, 3), (5, 5)), ((6, 6), 4),
                                    ((4, 4), (2, 2)), ((5, 5), 1), ((3, 3), (3, None))])
def test_adaptive_avg_pool_finite_differences(hw, out, rng):
    layer = AdaptiveAvgPool2d(out)
    x = rng.standard_normal((2, 3) + hw)
    y = layer.forward(x)
    assert y.shape == (2,) + layer.output_shape((3,) + hw)
    g = rng.standard_normal(y.shape)
    check_gradient(lambda v: AdaptiveAvgPool2d(out).forward(v), [x], 0, layer.backward(g), g)
    # the bins: every output is the mean of its torch-style window
    oh, ow = y.shape[2:]
    h, w = hw
    for i in range(oh):
        for j in range(ow):
            r0, r1 = i * h // oh, -(-(i + 1) * h // oh)
            c0, c1 = j * w // ow, -(-(j + 1) * w // ow)
            np.testing.assert_allclose(y[:, :, i, j], x[:, :, r0:r1, c0:c1].mean(axis=(2, 3)))


def test_adaptive_avg_pool_float32_and_config():
    layer = AdaptiveAvgPool2d((7, 7))
    x = np.ones((1, 2, 1, 1), np.float32)
    y = layer.forward(x)
    assert y.shape == (1, 2, 7, 7) and y.dtype == np.float32 and np.all(y == 1)
    assert layer.backward(np.ones_like(y)).dtype == np.float32
    assert layer.get_config() == {"output_size": [7, 7]}
    assert repr(layer) == "AdaptiveAvgPool2d(output_size=7)"
    with pytest.raises(ValueError, match="expected a 4-D input"):
        layer.forward(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="positive ints"):
        AdaptiveAvgPool2d(0)


# ---------------------------------------------------------------------- save / load
def test_save_load_round_trip_in_a_fresh_process(tmp_path):
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    for name, model in [("resnet", zoo.resnet(50, variant="cifar", width=2, seed=1)),
                        ("densenet", zoo.densenet(121, variant="cifar", growth_rate=2, seed=1)),
                        ("vgg", zoo.vgg(11, batch_norm=True, width=4, input_size=32, seed=1)),
                        ("alexnet", zoo.alexnet(variant="cifar", seed=1))]:
        model.train()
        model.forward(x)  # move the BatchNorm running statistics away from their defaults
        model.eval()
        path = tmp_path / f"{name}.npz"
        model.save(path)
        np.save(tmp_path / f"{name}_want.npy", model.forward(x))
        again = cnncore.load(path)
        assert type(again) is type(model)
        assert repr(again) == repr(model)
        np.testing.assert_array_equal(again.forward(x), model.forward(x))
    np.save(tmp_path / "x.npy", x)
    # A new interpreter that never imported cnncore.zoo rebuilds the zoo's containers.
    code = ("import sys, numpy as np, cnncore\n"
            "assert 'cnncore.zoo' not in sys.modules\n"
            "d = sys.argv[1]\n"
            "x = np.load(d + '/x.npy')\n"
            "for n in ['resnet', 'densenet', 'vgg', 'alexnet']:\n"
            "    m = cnncore.load(d + '/' + n + '.npz')\n"
            "    assert np.array_equal(m.forward(x), np.load(d + '/' + n + '_want.npy')), n\n"
            "import cnncore.interop, cnncore.viz\n"
            "assert 'torch' not in sys.modules  # torch is never a dependency\n"
            "print('ok')\n")
    env = dict(os.environ,
               PYTHONPATH=CNNCORE_PARENT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# ---------------------------------------------------------------------- training
@pytest.mark.parametrize("name,kwargs", [
    ("lenet5", {"variant": "cifar"}),
    ("alexnet", {"variant": "cifar"}),
    ("vgg11_bn", {"variant": "cifar", "width": 16}),
    ("resnet18", {"variant": "cifar", "width": 8}),
    ("resnet50", {"variant": "cifar", "width": 4}),
    ("densenet121", {"variant": "cifar", "growth_rate": 4}),
])
def test_small_variant_loss_drops(name, kwargs):
    gen = np.random.default_rng(0)
    x = gen.standard_normal((8, 3, 32, 32)).astype(np.float32)
    y = gen.integers(0, 10, 8)
    model = zoo.get_model(name, seed=0, **kwargs)
    model.train()
    loss = SoftmaxCrossEntropy()
    opt = Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(10):
        model.zero_grad()
        losses.append(loss(model.forward(x), y))
        model.backward(loss.backward())
        opt.step()
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * losses[0], losses


# ---------------------------------------------------------------------- cifar_like example
def test_synthetic_cifar_data():
    from cnncore.examples.cifar_like import CLASSES, synthetic_cifar
    x, y = synthetic_cifar(50, seed=3)
    assert x.shape == (50, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    assert np.bincount(y, minlength=10).tolist() == [5] * len(CLASSES)
    x2, y2 = synthetic_cifar(50, seed=3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert x.std() > 40  # patterns, not flat images


def test_load_cifar10_python_batches(tmp_path):
    import pickle
    from cnncore.examples.cifar_like import load_cifar10
    gen = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 3)]:
        data = gen.integers(0, 256, (n, 3072), dtype=np.uint8)
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": list(range(n)), b"batch_label": b"x"}, f,
                        protocol=4)
        if name == "test_batch":
            first = data[0]
    (xtr, ytr), (xte, yte) = load_cifar10(str(tmp_path))
    assert xtr.shape == (20, 32, 32, 3) and ytr.tolist() == [0, 1, 2, 3] * 5
    assert xte.shape == (3, 32, 32, 3) and yte.dtype == np.int64
    # rows hold the red plane, then green, then blue, each row-major
    assert xte[0, 0, 1, 0] == first[1] and xte[0, 0, 0, 1] == first[1024]
    assert xte[0, 1, 0, 2] == first[2048 + 32]


def test_cifar_like_example_runs(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from cnncore.examples import cifar_like
    acc = cifar_like.main(["--model", "resnet18", "--width", "4", "--n-train", "64",
                           "--n-test", "32", "--epochs", "1", "--batch-size", "16", "--quiet",
                           "--out", str(tmp_path)])
    assert 0.0 <= acc <= 1.0
    out = capsys.readouterr().out
    assert "Total params:" in out and "test accuracy:" in out
    assert (tmp_path / "resnet18_cifar_like.npz").exists()
    assert (tmp_path / "resnet18_cifar_like_curves.png").exists()
    with pytest.raises(SystemExit):
        cifar_like.main(["--model", "lenet5", "--width", "8"])
