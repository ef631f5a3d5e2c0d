"""The classic networks: LeNet-5, AlexNet, VGG, ResNet and DenseNet.

Every builder takes ``num_classes``, ``in_channels``, ``input_size`` (an int or ``(H, W)``),
``variant``, ``seed`` (initialisation seed; ``None``: unseeded) and ``dtype``, and returns a
model whose ``input_shape`` is set (so ``model.summary()`` needs no argument). ``variant``
sets the defaults of the other three:

============  ===========  ===========  ==========================================
variant       num_classes  in_channels  input_size
============  ===========  ===========  ==========================================
'imagenet'    1000         3            224 (AlexNet: 227)
'cifar'       10           3            32: 3x3 stem, no stem max-pool, narrower
                                        widths where the literature does so
'mnist'       10           1            28 (LeNet-5 only, its default)
============  ===========  ===========  ==========================================

Weights are He-uniform with zero biases, except that the last Linear layer (the classifier's
output) of AlexNet, VGG, ResNet and DenseNet starts at zero: a fresh model's loss is
``ln(num_classes)``. LeNet-5 keeps :func:`cnncore.model.lenet5`'s initialisation.

ResNet, VGG, DenseNet and ``alexnet(variant='torchvision')`` have torchvision's module
structure and parameter names (``layer1.0.conv1.weight``, ``features.0.weight``, ...), so
:func:`cnncore.interop.load_torch_state_dict` loads torchvision's published weights, and with
1000 classes their parameter counts equal torchvision's.
"""

import numpy as np

from ..layers import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten,
                      Linear, LocalResponseNorm, MaxPool2d, ReLU, Sequential)
from .blocks import AlexNet, DenseLayer, DenseNet, NamedSequential, ResidualBlock, ResNet, VGG

__all__ = ["lenet5", "alexnet", "vgg", "resnet", "densenet"]

_DEFAULTS = {  # variant -> (num_classes, in_channels, input size)
    "imagenet": (1000, 3, 224),
    "torchvision": (1000, 3, 224),
    "cifar": (10, 3, 32),
    "mnist": (10, 1, 28),
}


def _conv2d(*args, **kwargs):
    # Built with zero weights: _finish draws the real ones once (a second draw of VGG's
    # 138 M weights would double its build time).
    return Conv2d(*args, weight_init="zeros", **kwargs)


def _linear(*args, **kwargs):
    return Linear(*args, weight_init="zeros", **kwargs)


def _positive(value, name, where):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{where}: {name} must be a positive int, got {value!r}")
    return int(value)


def _resolve(where, variant, allowed, num_classes, in_channels, input_size, default_size=None):
    """Fill in the variant's defaults and check the values; returns (classes, channels, (h, w))."""
    if variant not in allowed:
        raise ValueError(f"{where}: unknown variant {variant!r}; choose one of "
                         f"{', '.join(repr(v) for v in allowed)}")
    n, c, s = _DEFAULTS[variant]
    if default_size is not None:
        s = default_size
    num_classes = _positive(n if num_classes is None else num_classes, "num_classes", where)
    in_channels = _positive(c if in_channels is None else in_channels, "in_channels", where)
    size = s if input_size is None else input_size
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise ValueError(f"{where}: input_size must be an int or (H, W), got {size!r}")
        hw = (_positive(size[0], "input_size", where), _positive(size[1], "input_size", where))
    else:
        hw = (_positive(size, "input_size", where),) * 2
    return num_classes, in_channels, hw


def _finish(model, where, in_channels, hw, seed, zero_head=True):
    """Set ``input_shape``, check that the network accepts it, initialise the weights from
    ``seed`` (He uniform, zero biases; ``None``: fresh entropy). With ``zero_head`` the last
    Linear layer (the classifier's output) starts at zero: the initial logits are 0 and the
    initial loss is ``ln(num_classes)``, instead of the large logits that He-initialised
    classifiers (doubled again by each training-mode dropout) start from."""
    shape = (in_channels,) + tuple(hw)
    try:
        model.output_shape(shape)
    except ValueError as e:
        raise ValueError(f"{where}: input size {hw[0]}x{hw[1]} is too small for this network "
                         f"({e})") from None
    model.input_shape = shape
    for _, layer in model.named_layers():
        if isinstance(layer, (Conv2d, Linear)):
            layer.weight_init = "he_uniform"
    if zero_head:
        head = [layer for _, layer in model.named_layers() if isinstance(layer, Linear)][-1]
        head.weight_init = "zeros"
    return model.initialize(seed)


def _flat_size(features, shape):
    return int(np.prod(features.output_shape(shape)))


def _features_or_error(features, shape, where, hw):
    try:
        return _flat_size(features, shape)
    except ValueError as e:
        raise ValueError(f"{where}: input size {hw[0]}x{hw[1]} is too small for this network "
                         f"({e})") from None


# ---------------------------------------------------------------------------------- LeNet-5
def lenet5(num_classes=None, in_channels=None, input_size=None, variant="mnist", seed=0,
           dtype=np.float32):
    """LeNet-5 (LeCun et al., 1998) with ReLU and max pooling.

    conv5x5 ->6, ReLU, maxpool 2; conv5x5 6->16, ReLU, maxpool 2; flatten; linear ->120, ReLU,
    120->84, ReLU, 84->``num_classes``. 61,706 parameters for 1x28x28 inputs and 10 classes.

    ``variant='mnist'`` (default): 1x28x28 inputs, the first convolution padded by 2 (the
    network of :func:`cnncore.model.lenet5`, same weights for the same seed).
    ``variant='cifar'``: 3x32x32 inputs, no padding (the paper's 32x32 input plane).
    """
    where = "lenet5"
    num_classes, in_channels, hw = _resolve(where, variant, ("mnist", "cifar"), num_classes,
                                            in_channels, input_size)
    pad = 2 if variant == "mnist" else 0
    features = Sequential(
        _conv2d(in_channels, 6, 5, padding=pad, dtype=dtype), ReLU(), MaxPool2d(2),
        _conv2d(6, 16, 5, dtype=dtype), ReLU(), MaxPool2d(2),
    )
    flat = _features_or_error(features, (in_channels,) + hw, where, hw)
    model = Sequential(
        *features,
        Flatten(),
        _linear(flat, 120, dtype=dtype), ReLU(),
        _linear(120, 84, dtype=dtype), ReLU(),
        _linear(84, num_classes, dtype=dtype),
    )
    return _finish(model, where, in_channels, hw, seed, zero_head=False)


# ---------------------------------------------------------------------------------- AlexNet
def alexnet(num_classes=None, in_channels=None, input_size=None, variant="imagenet",
            dropout=0.5, seed=0, dtype=np.float32):
    """AlexNet (Krizhevsky, Sutskever & Hinton, 2012).

    ``variant='imagenet'`` (default; the course material's network, one tower): 3x227x227
    input; conv 11x11/4 96, ReLU, LRN, max-pool 3/2; conv 5x5 256 (pad 2), ReLU, LRN, max-pool
    3/2; conv 3x3 384, 384, 256 (pad 1, ReLU); max-pool 3/2; dropout, fc 4096, ReLU, dropout,
    fc 4096, ReLU, fc ``num_classes``. Shapes 96x55x55 -> 96x27x27 -> 256x27x27 -> 256x13x13
    -> 384x13x13 -> 384x13x13 -> 256x13x13 -> 256x6x6 -> 4096 -> 4096 -> 1000; 62,378,344
    parameters. LRN: size 5, alpha 1e-4, beta 0.75, k 2 (PyTorch's formula, alpha divided by
    the size, as in Caffe's reference model). Max-pools overlap (3x3 windows, stride 2).

    ``variant='torchvision'``: torchvision's AlexNet (64-192-384-256-256 kernels, no LRN, a
    6x6 adaptive average pool; 61,100,840 parameters), whose published weights
    :func:`cnncore.interop.load_torch_state_dict` loads. 3x224x224 input.

    ``variant='cifar'``: the same pattern for 32x32 inputs: 3x3 convolutions 64-192-384-256-256
    (pad 1), LRN after the first two, three 3x3/2 max-pools (32 -> 15 -> 7 -> 3), classifier
    2304 -> 1024 -> 1024 -> ``num_classes``.
    """
    where = "alexnet"
    num_classes, c, hw = _resolve(where, variant, ("imagenet", "torchvision", "cifar"),
                                  num_classes, in_channels, input_size,
                                  default_size=227 if variant == "imagenet" else None)

    def conv(i, o, k, **kw):
        return _conv2d(i, o, k, dtype=dtype, **kw)

    def lrn():
        return LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)

    if variant == "imagenet":
        features = Sequential(
            conv(c, 96, 11, stride=4), ReLU(), lrn(), MaxPool2d(3, 2),
            conv(96, 256, 5, padding=2), ReLU(), lrn(), MaxPool2d(3, 2),
            conv(256, 384, 3, padding=1), ReLU(),
            conv(384, 384, 3, padding=1), ReLU(),
            conv(384, 256, 3, padding=1), ReLU(),
            MaxPool2d(3, 2))
        hidden = 4096
    elif variant == "torchvision":
        features = Sequential(
            conv(c, 64, 11, stride=4, padding=2), ReLU(), MaxPool2d(3, 2),
            conv(64, 192, 5, padding=2), ReLU(), MaxPool2d(3, 2),
            conv(192, 384, 3, padding=1), ReLU(),
            conv(384, 256, 3, padding=1), ReLU(),
            conv(256, 256, 3, padding=1), ReLU(),
            MaxPool2d(3, 2))
        hidden = 4096
    else:
        features = Sequential(
            conv(c, 64, 3, padding=1), ReLU(), lrn(), MaxPool2d(3, 2),
            conv(64, 192, 3, padding=1), ReLU(), lrn(), MaxPool2d(3, 2),
            conv(192, 384, 3, padding=1), ReLU(),
            conv(384, 256, 3, padding=1), ReLU(),
            conv(256, 256, 3, padding=1), ReLU(),
            MaxPool2d(3, 2))
        hidden = 1024
    parts = {"features": features}
    if variant == "torchvision":
        _features_or_error(features, (c,) + hw, where, hw)
        parts["avgpool"] = AdaptiveAvgPool2d(6)
        flat = 256 * 6 * 6
    else:
        flat = _features_or_error(features, (c,) + hw, where, hw)
    parts["flatten"] = Flatten()
    parts["classifier"] = Sequential(
        Dropout(dropout), _linear(flat, hidden, dtype=dtype), ReLU(),
        Dropout(dropout), _linear(hidden, hidden, dtype=dtype), ReLU(),
        _linear(hidden, num_classes, dtype=dtype))
    return _finish(AlexNet(parts), where, c, hw, seed)


# ---------------------------------------------------------------------------------- VGG
VGG_CONFIGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
         512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"],
}


def vgg(depth=16, num_classes=None, in_channels=None, input_size=None, variant="imagenet",
        batch_norm=False, width=64, dropout=0.5, seed=0, dtype=np.float32):
    """VGG-11/13/16/19 (Simonyan & Zisserman, 2015), configurations A, B, D, E.

    3x3 convolutions (pad 1, with bias) in five stages of 64-128-256-512-512 channels, each
    stage ending with a 2x2 max-pool; with ``batch_norm`` every convolution is followed by a
    BatchNorm2d (torchvision's ``vgg16_bn``). ``variant='imagenet'``: a 7x7 adaptive average
    pool and the classifier 25088 -> 4096 -> 4096 -> ``num_classes`` with ReLU and dropout
    (torchvision's layout: VGG-16 has 138,357,544 parameters). ``variant='cifar'``: no
    adaptive pool (32x32 inputs end at 512x1x1) and the narrower classifier 512 -> 512 -> 512
    -> ``num_classes`` of the CIFAR VGGs.

    ``width``: channels of the first stage (64 in the paper); stage widths scale with it.
    """
    where = "vgg"
    if depth not in VGG_CONFIGS:
        raise ValueError(f"{where}: depth must be one of {sorted(VGG_CONFIGS)}, got {depth!r}")
    num_classes, c, hw = _resolve(where, variant, ("imagenet", "cifar"), num_classes,
                                  in_channels, input_size)
    width = _positive(width, "width", where)
    layers, ch = [], c
    for v in VGG_CONFIGS[depth]:
        if v == "M":
            layers.append(MaxPool2d(2, 2))
            continue
        out = max(1, v * width // 64)
        layers.append(_conv2d(ch, out, 3, padding=1, dtype=dtype))
        if batch_norm:
            layers.append(BatchNorm2d(out, dtype=dtype))
        layers.append(ReLU())
        ch = out
    features = Sequential(*layers)
    parts = {"features": features}
    if variant == "imagenet":
        _features_or_error(features, (c,) + hw, where, hw)
        parts["avgpool"] = AdaptiveAvgPool2d(7)
        flat, hidden = ch * 7 * 7, 4096
    else:
        flat, hidden = _features_or_error(features, (c,) + hw, where, hw), 512
    parts["flatten"] = Flatten()
    parts["classifier"] = Sequential(
        _linear(flat, hidden, dtype=dtype), ReLU(), Dropout(dropout),
        _linear(hidden, hidden, dtype=dtype), ReLU(), Dropout(dropout),
        _linear(hidden, num_classes, dtype=dtype))
    return _finish(VGG(parts), where, c, hw, seed)


# ---------------------------------------------------------------------------------- ResNet
RESNET_CONFIGS = {  # depth -> (block, blocks per stage)
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def _bn_conv(i, o, k, stride, dtype):
    return _conv2d(i, o, k, stride=stride, padding=k // 2, bias=False, dtype=dtype)


def _downsample(inplanes, outplanes, stride, dtype):
    # torchvision: nn.Sequential(conv1x1(inplanes, outplanes, stride), norm_layer(outplanes))
    return Sequential(_bn_conv(inplanes, outplanes, 1, stride, dtype),
                      BatchNorm2d(outplanes, dtype=dtype))


def basic_block(inplanes, planes, stride=1, dtype=np.float32):
    """ResNet's basic block: conv3x3-BN-ReLU-conv3x3-BN, plus the input (through ``downsample``,
    a 1x1 convolution and BN, when the shape changes), then ReLU. Output: ``planes``."""
    parts = {"conv1": _bn_conv(inplanes, planes, 3, stride, dtype),
             "bn1": BatchNorm2d(planes, dtype=dtype), "relu1": ReLU(),
             "conv2": _bn_conv(planes, planes, 3, 1, dtype),
             "bn2": BatchNorm2d(planes, dtype=dtype)}
    shortcut = None
    if stride != 1 or inplanes != planes:
        parts["downsample"] = _downsample(inplanes, planes, stride, dtype)
        shortcut = "downsample"
    parts["relu"] = ReLU()
    return ResidualBlock(parts, shortcut=shortcut, activation="relu")


def bottleneck_block(inplanes, planes, stride=1, dtype=np.float32):
    """ResNet's bottleneck block (torchvision's "v1.5": the stride on the 3x3 convolution):
    conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1-BN (to ``4 * planes``), plus the input (through
    ``downsample`` when the shape changes), then ReLU."""
    out = 4 * planes
    parts = {"conv1": _bn_conv(inplanes, planes, 1, 1, dtype),
             "bn1": BatchNorm2d(planes, dtype=dtype), "relu1": ReLU(),
             "conv2": _bn_conv(planes, planes, 3, stride, dtype),
             "bn2": BatchNorm2d(planes, dtype=dtype), "relu2": ReLU(),
             "conv3": _bn_conv(planes, out, 1, 1, dtype),
             "bn3": BatchNorm2d(out, dtype=dtype)}
    shortcut = None
    if stride != 1 or inplanes != out:
        parts["downsample"] = _downsample(inplanes, out, stride, dtype)
        shortcut = "downsample"
    parts["relu"] = ReLU()
    return ResidualBlock(parts, shortcut=shortcut, activation="relu")


def resnet(depth=18, num_classes=None, in_channels=None, input_size=None, variant="imagenet",
           width=64, seed=0, dtype=np.float32):
    """ResNet-18/34/50/101/152 (He et al., 2015), torchvision's architecture and names.

    ``variant='imagenet'``: stem conv 7x7/2 (``width`` channels, no bias), BN, ReLU, max-pool
    3x3/2; four stages (``layer1`` .. ``layer4``) of basic blocks (18, 34) or bottleneck
    blocks 1x1-3x3-1x1 (50, 101, 152) with ``width``, 2, 4, 8 x ``width`` channels (x4 at the
    bottleneck outputs), the last three starting with stride 2; global average pool; ``fc``.
    Parameters with 1000 classes: ResNet-18 11,689,512, ResNet-34 21,797,672, ResNet-50
    25,557,032. ``variant='cifar'``: stem conv 3x3/1, no max-pool (32x32 -> 4x4 at layer4,
    the CIFAR ResNet-18 of common use; ResNet-18 has 11,173,962 parameters for 10 classes).

    ``width``: channels of the stem and the first stage (64 in the paper); a small ``width``
    (e.g. 8 or 16) gives a network with the same structure that trains fast on a CPU.
    """
    where = "resnet"
    if depth not in RESNET_CONFIGS:
        raise ValueError(f"{where}: depth must be one of {sorted(RESNET_CONFIGS)}, "
                         f"got {depth!r}")
    num_classes, c, hw = _resolve(where, variant, ("imagenet", "cifar"), num_classes,
                                  in_channels, input_size)
    width = _positive(width, "width", where)
    kind, counts = RESNET_CONFIGS[depth]
    block, expansion = (basic_block, 1) if kind == "basic" else (bottleneck_block, 4)
    if variant == "imagenet":
        parts = {"conv1": _conv2d(c, width, 7, stride=2, padding=3, bias=False, dtype=dtype),
                 "bn1": BatchNorm2d(width, dtype=dtype), "relu": ReLU(),
                 "maxpool": MaxPool2d(3, 2, padding=1)}
    else:
        parts = {"conv1": _conv2d(c, width, 3, stride=1, padding=1, bias=False, dtype=dtype),
                 "bn1": BatchNorm2d(width, dtype=dtype), "relu": ReLU()}
    inplanes = width
    for stage, n in enumerate(counts):
        planes = width * 2 ** stage
        blocks = []
        for i in range(n):
            stride = 2 if (stage > 0 and i == 0) else 1
            blocks.append(block(inplanes, planes, stride, dtype=dtype))
            inplanes = planes * expansion
        parts[f"layer{stage + 1}"] = Sequential(*blocks)
    parts["avgpool"] = AdaptiveAvgPool2d(1)
    parts["flatten"] = Flatten()
    parts["fc"] = _linear(inplanes, num_classes, dtype=dtype)
    return _finish(ResNet(parts), where, c, hw, seed)


# ---------------------------------------------------------------------------------- DenseNet
DENSENET_CONFIGS = {  # depth -> (growth rate, layers per dense block)
    121: (32, (6, 12, 24, 16)),
    161: (48, (6, 12, 36, 24)),
    169: (32, (6, 12, 32, 32)),
    201: (32, (6, 12, 48, 32)),
}


def dense_layer(in_features, growth_rate, bn_size=4, dtype=np.float32):
    """DenseNet-BC layer: BN-ReLU-conv1x1 (``bn_size * growth_rate``)-BN-ReLU-conv3x3
    (``growth_rate``), its output concatenated to its input."""
    mid = bn_size * growth_rate
    return DenseLayer({
        "norm1": BatchNorm2d(in_features, dtype=dtype), "relu1": ReLU(),
        "conv1": _conv2d(in_features, mid, 1, bias=False, dtype=dtype),
        "norm2": BatchNorm2d(mid, dtype=dtype), "relu2": ReLU(),
        "conv2": _conv2d(mid, growth_rate, 3, padding=1, bias=False, dtype=dtype)})


def transition(in_features, out_features, dtype=np.float32):
    """DenseNet transition: BN-ReLU-conv1x1-avgpool 2x2."""
    return NamedSequential({
        "norm": BatchNorm2d(in_features, dtype=dtype), "relu": ReLU(),
        "conv": _conv2d(in_features, out_features, 1, bias=False, dtype=dtype),
        "pool": AvgPool2d(2, 2)})


def densenet(depth=121, num_classes=None, in_channels=None, input_size=None,
             variant="imagenet", growth_rate=None, bn_size=4, seed=0, dtype=np.float32):
    """DenseNet-121/161/169/201 (Huang et al., 2017; DenseNet-BC), torchvision's names.

    ``variant='imagenet'``: stem ``conv0`` 7x7/2 (``2 * growth_rate`` channels), ``norm0``,
    ``relu0``, ``pool0`` max-pool 3x3/2; four dense blocks (``denseblock1`` ..) of
    :func:`dense_layer` (BN-ReLU-Conv1x1-BN-ReLU-Conv3x3, growth rate 32, bottleneck 4 x 32)
    separated by transitions (BN-ReLU-Conv1x1 halving the channels, AvgPool 2x2); ``norm5``;
    ReLU, global average pool, ``classifier``. DenseNet-121 with 1000 classes: 7,978,856
    parameters. ``variant='cifar'``: stem a single 3x3 convolution, no max-pool, growth rate
    12 (DenseNet-BC for CIFAR, k = 12).

    ``growth_rate`` overrides the variant's (32 for ImageNet, 48 for DenseNet-161, 12 for
    CIFAR); the stem has ``2 * growth_rate`` channels.
    """
    where = "densenet"
    if depth not in DENSENET_CONFIGS:
        raise ValueError(f"{where}: depth must be one of {sorted(DENSENET_CONFIGS)}, "
                         f"got {depth!r}")
    num_classes, c, hw = _resolve(where, variant, ("imagenet", "cifar"), num_classes,
                                  in_channels, input_size)
    k, block_config = DENSENET_CONFIGS[depth]
    if growth_rate is None:
        growth_rate = k if variant == "imagenet" else 12
    growth_rate = _positive(growth_rate, "growth_rate", where)
    bn_size = _positive(bn_size, "bn_size", where)
    nf = 2 * growth_rate
    if variant == "imagenet":
        feats = {"conv0": _conv2d(c, nf, 7, stride=2, padding=3, bias=False, dtype=dtype),
                 "norm0": BatchNorm2d(nf, dtype=dtype), "relu0": ReLU(),
                 "pool0": MaxPool2d(3, 2, padding=1)}
    else:
        feats = {"conv0": _conv2d(c, nf, 3, padding=1, bias=False, dtype=dtype)}
    for b, n in enumerate(block_config):
        layers = {}
        for i in range(n):
            layers[f"denselayer{i + 1}"] = dense_layer(nf + i * growth_rate, growth_rate,
                                                       bn_size, dtype=dtype)
        feats[f"denseblock{b + 1}"] = NamedSequential(layers)
        nf += n * growth_rate
        if b != len(block_config) - 1:
            feats[f"transition{b + 1}"] = transition(nf, nf // 2, dtype=dtype)
            nf //= 2
    feats["norm5"] = BatchNorm2d(nf, dtype=dtype)
    model = DenseNet({"features": NamedSequential(feats), "relu": ReLU(),
                      "avgpool": AdaptiveAvgPool2d(1), "flatten": Flatten(),
                      "classifier": _linear(nf, num_classes, dtype=dtype)})
    return _finish(model, where, c, hw, seed)
