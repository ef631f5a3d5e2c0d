"""cnncore.interop: torchvision-style state dicts onto zoo models.

The first tests need no torch (the mapping rules, round trips, errors). When torch is
installed, the same small networks are built in torch with torchvision's module structure
(written out here: torchvision itself is not needed), their weights are copied into the zoo
model with ``load_torch_state_dict``, and cnncore's forward output and input gradient must
match torch's to 1e-4.
"""

import numpy as np
import pytest

from cnncore import zoo
from cnncore.interop import load_torch_state_dict, normalize_torch_names, torch_state_dict
from cnncore.layers import AdaptiveAvgPool2d

try:
    import torch
except ImportError:  # the mapping tests still run; the comparisons with torch are skipped
    torch = nn = TF = None
    _Module = _ModuleDict = object
else:
    nn, TF = torch.nn, torch.nn.functional
    _Module, _ModuleDict = nn.Module, nn.ModuleDict

needs_torch = pytest.mark.skipif(torch is None, reason="needs torch (pip install torch)")


def _tiny_resnet(seed=1):
    return zoo.resnet(18, variant="cifar", width=4, input_size=16, seed=seed)


# ---------------------------------------------------------------------- without torch
def test_round_trip_through_torch_names(tmp_path, rng):
    src = _tiny_resnet()
    for _, layer in src.named_layers():  # non-trivial BN statistics
        if hasattr(layer, "running_var"):
            layer.set_buffer("running_mean", rng.standard_normal(layer.num_features).astype(np.float32))
            layer.set_buffer("running_var", rng.uniform(0.5, 2, layer.num_features).astype(np.float32))
    sd = torch_state_dict(src)
    assert "layer1.0.conv1.weight" in sd and "layer2.0.downsample.0.weight" in sd
    assert "layer2.0.downsample.1.running_var" in sd and "fc.bias" in sd
    assert sd["bn1.num_batches_tracked"].dtype == np.int64
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    want = src.eval().forward(x)

    dst = load_torch_state_dict(_tiny_resnet(seed=2), sd).eval()
    np.testing.assert_array_equal(dst.forward(x), want)
    assert dst.load_report == {"missing": [], "unexpected": []}

    path = tmp_path / "w.npz"
    np.savez(path, **{"module." + k: v for k, v in sd.items()})  # DataParallel prefix, float64
    dst = load_torch_state_dict(_tiny_resnet(seed=3), str(path)).eval()
    np.testing.assert_array_equal(dst.forward(x), want)
    assert dst.layer1[0].conv1.weight.data.dtype == np.float32


def test_old_densenet_names_and_num_batches_tracked():
    state = {"features.denseblock1.denselayer1.norm.1.weight": 1,
             "features.denseblock1.denselayer1.conv.2.weight": 2,
             "features.norm5.num_batches_tracked": 3,
             "classifier.weight": 4}
    assert normalize_torch_names(state) == {"features.denseblock1.denselayer1.norm1.weight": 1,
                                            "features.denseblock1.denselayer1.conv2.weight": 2,
                                            "classifier.weight": 4}
    model = zoo.densenet(121, variant="cifar", growth_rate=2, seed=0)
    sd = torch_state_dict(model)
    old = {}
    for k, v in sd.items():
        for a in ("norm1", "norm2", "conv1", "conv2"):
            if ".denselayer" in k and f".{a}." in k:
                k = k.replace(f".{a}.", f".{a[:-1]}.{a[-1]}.")
        old[k] = v + 1 if v.dtype.kind == "f" else v
    assert "features.denseblock2.denselayer3.norm.2.running_var" in old
    load_torch_state_dict(model, old)
    assert np.all(model.features.denseblock2.denselayer3.norm2.running_var
                  == sd["features.denseblock2.denselayer3.norm2.running_var"] + 1)


def test_mismatches_are_reported():
    model = _tiny_resnet()
    sd = torch_state_dict(model)
    extra = dict(sd, **{"layer9.weight": np.zeros(3)})
    with pytest.raises(ValueError, match=r"unexpected: layer9\.weight"):
        load_torch_state_dict(model, extra)
    partial = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    with pytest.raises(ValueError, match=r"missing: fc\.weight, fc\.bias"):
        load_torch_state_dict(model, partial)
    # strict=False: load the backbone into a model with another head
    other = zoo.resnet(18, variant="cifar", width=4, num_classes=3, seed=5)
    load_torch_state_dict(other, partial, strict=False)
    assert other.load_report == {"missing": ["fc.weight", "fc.bias"], "unexpected": []}
    np.testing.assert_array_equal(other.conv1.weight.data, sd["conv1.weight"])
    bad = dict(sd, **{"conv1.weight": np.zeros((4, 3, 5, 5))})
    with pytest.raises(ValueError, match=r"'conv1.weight' has shape \(4, 3, 5, 5\).*\(4, 3, 3, 3\)"):
        load_torch_state_dict(model, bad)
    with pytest.raises(TypeError, match="dict of arrays"):
        load_torch_state_dict(model, [1, 2])


# ---------------------------------------------------------------------- with torch


class TBasicBlock(_Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class TBottleneck(_Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class TResNet(_Module):
    """torchvision.models.ResNet, with an optional CIFAR stem (3x3 conv, no max-pool)."""

    def __init__(self, block, layers, num_classes, width=64, cifar=False):
        super().__init__()
        self.inplanes = width
        if cifar:
            self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.Identity() if cifar else nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], 2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], 2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TDenseLayer(_Module):
    def __init__(self, nin, growth, bn_size):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(nin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(nin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, features):
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class TDenseBlock(_ModuleDict):
    def __init__(self, n, nin, growth, bn_size):
        super().__init__()
        for i in range(n):
            self.add_module(f"denselayer{i + 1}", TDenseLayer(nin + i * growth, growth, bn_size))

    def forward(self, x):
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class TDenseNet(_Module):
    """torchvision.models.DenseNet, with an optional CIFAR stem (one 3x3 conv)."""

    def __init__(self, growth, block_config, num_classes, bn_size=4, cifar=False):
        super().__init__()
        nf = 2 * growth
        if cifar:
            stem = [("conv0", nn.Conv2d(3, nf, 3, 1, 1, bias=False))]
        else:
            stem = [("conv0", nn.Conv2d(3, nf, 7, 2, 3, bias=False)),
                     ("norm0", nn.BatchNorm2d(nf)), ("relu0", nn.ReLU()),
                     ("pool0", nn.MaxPool2d(3, 2, 1))]
        from collections import OrderedDict
        self.features = nn.Sequential(OrderedDict(stem))
        for i, n in enumerate(block_config):
            self.features.add_module(f"denseblock{i + 1}", TDenseBlock(n, nf, growth, bn_size))
            nf += n * growth
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", nn.Sequential(OrderedDict([
                    ("norm", nn.BatchNorm2d(nf)), ("relu", nn.ReLU()),
                    ("conv", nn.Conv2d(nf, nf // 2, 1, bias=False)),
                    ("pool", nn.AvgPool2d(2, 2))])))
                nf //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(nf))
        self.classifier = nn.Linear(nf, num_classes)

    def forward(self, x):
        out = TF.relu(self.features(x))
        out = torch.flatten(TF.adaptive_avg_pool2d(out, (1, 1)), 1)
        return self.classifier(out)


def t_vgg(cfg, num_classes, batch_norm, cifar, width):
    layers, c = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            v = v * width // 64
            layers.append(nn.Conv2d(c, v, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU())
            c = v
    hidden, flat = (512, c) if cifar else (4096, c * 49)

    class TVGG(_Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.Identity() if cifar else nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(flat, hidden), nn.ReLU(), nn.Dropout(),
                nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(),
                nn.Linear(hidden, num_classes))

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    return TVGG()


class TAlexNet(_Module):
    """torchvision.models.AlexNet."""

    def __init__(self, num_classes):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(256 * 36, 4096), nn.ReLU(), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class TCourseAlexNet(_Module):
    """The course's AlexNet (96-256-384-384-256, LRN after the first two convolutions)."""

    def __init__(self, num_classes, flat):
        super().__init__()
        lrn = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, 11, 4), nn.ReLU(), nn.LocalResponseNorm(**lrn), nn.MaxPool2d(3, 2),
            nn.Conv2d(96, 256, 5, padding=2), nn.ReLU(), nn.LocalResponseNorm(**lrn),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(flat, 4096), nn.ReLU(), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def _randomise_batch_norms(tmodel, gen):
    with torch.no_grad():
        for m in tmodel.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.from_numpy(gen.uniform(0.5, 1.5, n)))
                m.bias.copy_(torch.from_numpy(gen.normal(0, 0.2, n)))
                m.running_mean.copy_(torch.from_numpy(gen.normal(0, 0.2, n)))
                m.running_var.copy_(torch.from_numpy(gen.uniform(0.5, 2.0, n)))


def _close(actual, expected, what):
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=1e-4,
                               atol=1e-4 * scale, err_msg=what)


def _compare(tmodel, cmodel, shape, dtype, modes=("eval", "train"), seed=0):
    """Copy tmodel's weights into cmodel; forward and input gradient of sum(out * g) must
    agree in each mode."""
    gen = np.random.default_rng(seed)
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    tmodel = tmodel.to(tdtype)
    _randomise_batch_norms(tmodel, gen)
    cmodel = cmodel.astype(dtype)
    state = {k: v.detach().numpy() for k, v in tmodel.state_dict().items()}
    load_torch_state_dict(cmodel, state)
    x = gen.standard_normal(shape).astype(dtype)
    for mode in modes:
        tmodel.train(mode == "train")
        cmodel.train(mode == "train")
        xt = torch.tensor(x, requires_grad=True)
        yt = tmodel(xt)
        g = gen.standard_normal(tuple(yt.shape)).astype(dtype)
        (yt * torch.from_numpy(g)).sum().backward()
        y = cmodel.forward(x)
        gx = cmodel.backward(g)
        assert y.dtype == dtype and gx.dtype == dtype
        _close(y, yt.detach().numpy(), f"{type(cmodel).__name__} {mode} forward")
        _close(gx, xt.grad.numpy(), f"{type(cmodel).__name__} {mode} input gradient")


@pytest.fixture(autouse=True)
def _torch_seed():
    if torch is not None:
        torch.manual_seed(0)


@needs_torch
def test_resnet18_cifar_matches_torch():
    t = TResNet(TBasicBlock, [2, 2, 2, 2], 10, width=8, cifar=True)
    c = zoo.resnet(18, variant="cifar", width=8)
    _compare(t, c, (2, 3, 32, 32), np.float64)


@needs_torch
def test_resnet18_imagenet_stem_float32_matches_torch():
    t = TResNet(TBasicBlock, [2, 2, 2, 2], 1000, width=16)
    c = zoo.resnet(18, width=16)
    _compare(t, c, (2, 3, 64, 64), np.float32)


@needs_torch
def test_resnet50_bottleneck_matches_torch():
    t = TResNet(TBottleneck, [3, 4, 6, 3], 7, width=4)
    c = zoo.resnet(50, width=4, num_classes=7)
    _compare(t, c, (2, 3, 64, 64), np.float64)


@needs_torch
def test_densenet121_matches_torch():
    t = TDenseNet(4, (6, 12, 24, 16), 5, bn_size=2)
    c = zoo.densenet(121, growth_rate=4, bn_size=2, num_classes=5)
    _compare(t, c, (2, 3, 64, 64), np.float64)


@needs_torch
def test_densenet121_cifar_matches_torch():
    t = TDenseNet(3, (6, 12, 24, 16), 10, bn_size=2, cifar=True)
    c = zoo.densenet(121, variant="cifar", growth_rate=3, bn_size=2)
    _compare(t, c, (2, 3, 32, 32), np.float64, modes=("train",))


@needs_torch
@pytest.mark.parametrize("variant,size", [("imagenet", 32), ("cifar", 32)])
def test_vgg11_bn_matches_torch(variant, size):
    # imagenet at 32: the 1x1 feature map goes through the 7x7 adaptive pool (to 7x7)
    t = t_vgg(zoo.models.VGG_CONFIGS[11], 10, True, variant == "cifar", 8)
    c = zoo.vgg(11, variant=variant, batch_norm=True, width=8, num_classes=10,
                input_size=size)
    _compare(t, c, (2, 3, size, size), np.float64, modes=("eval",))


@needs_torch
def test_vgg16_plain_names_match_torch():
    t = t_vgg(zoo.models.VGG_CONFIGS[16], 10, False, True, 4)
    c = zoo.vgg(16, variant="cifar", width=4)
    assert [k for k in t.state_dict()] == [k for k, _ in c.named_parameters()]
    _compare(t, c, (2, 3, 32, 32), np.float64, modes=("eval",))


@needs_torch
def test_alexnet_torchvision_matches_torch():
    # 127x127: the features end at 256x3x3, which the 6x6 adaptive pool enlarges
    t = TAlexNet(10)
    c = zoo.alexnet(variant="torchvision", num_classes=10, input_size=127)
    _compare(t, c, (1, 3, 127, 127), np.float32, modes=("eval",))


@needs_torch
def test_course_alexnet_matches_torch():
    c = zoo.alexnet(num_classes=10, input_size=99)
    flat = c.classifier[1].in_features
    assert flat == 256 * 2 * 2
    t = TCourseAlexNet(10, flat)
    _compare(t, c, (1, 3, 99, 99), np.float32, modes=("eval",))


@needs_torch
@pytest.mark.parametrize("hw,out", [((7, 7), 3), ((5, 6), (7, 7)), ((1, 1), 7), ((10, 9), (3, 4)),
                                    ((12, 12), 6), ((8, 8), 1), ((6, 6), 6), ((9, 4), (None, 2))])
def test_adaptive_avg_pool_matches_torch(hw, out, rng):
    x = rng.standard_normal((2, 3) + hw)
    layer = AdaptiveAvgPool2d(out)
    y = layer.forward(x)
    xt = torch.tensor(x, requires_grad=True)
    yt = TF.adaptive_avg_pool2d(xt, out)
    g = rng.standard_normal(tuple(yt.shape))
    (yt * torch.from_numpy(g)).sum().backward()
    assert y.shape == tuple(yt.shape) == (2,) + layer.output_shape((3,) + hw)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.backward(g), xt.grad.numpy(), rtol=1e-12, atol=1e-12)
