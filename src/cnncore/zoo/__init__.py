"""Model zoo: the classic CNNs of the course material, each built in one line.

>>> from cnncore import zoo
>>> from cnncore.model import count_parameters
>>> model = zoo.resnet(18)                      # ImageNet ResNet-18: 3x224x224 -> 1000
>>> count_parameters(model)                     # model.summary() prints them layer by layer
11689512
>>> small = zoo.resnet(18, variant="cifar")     # 3x32x32 inputs, 10 classes
>>> small.input_shape
(3, 32, 32)
>>> vgg = zoo.get_model("vgg16_bn", variant="cifar")  # by name, as torchvision spells it

Builders: :func:`lenet5`, :func:`alexnet`, :func:`vgg`, :func:`resnet`, :func:`densenet`
(see :mod:`cnncore.zoo.models` for the variants and the common arguments), plus
torchvision-style shortcuts (``resnet18``, ``vgg16_bn``, ``densenet121``, ...) listed by
:func:`list_models`. ResNet, VGG, DenseNet and ``alexnet(variant='torchvision')`` carry
torchvision's parameter names: :func:`cnncore.interop.load_torch_state_dict` loads its
weights.
"""

import functools

from .blocks import (AlexNet, DenseLayer, DenseNet, NamedSequential, ResidualBlock, ResNet,
                     VGG)
from .models import (DENSENET_CONFIGS, RESNET_CONFIGS, VGG_CONFIGS, alexnet, basic_block,
                     bottleneck_block, dense_layer, densenet, lenet5, resnet, transition, vgg)

__all__ = [
    "lenet5", "alexnet", "vgg", "resnet", "densenet", "get_model", "list_models", "MODELS",
    "NamedSequential", "ResidualBlock", "DenseLayer", "ResNet", "VGG", "AlexNet", "DenseNet",
    "basic_block", "bottleneck_block", "dense_layer", "transition",
]


def _named(fn, name, doc, **fixed):
    f = functools.partial(fn, **fixed)
    f.__name__ = name
    f.__doc__ = doc
    return f


MODELS = {"lenet5": lenet5, "alexnet": alexnet}
for _d in sorted(VGG_CONFIGS):
    MODELS[f"vgg{_d}"] = _named(vgg, f"vgg{_d}", f"VGG-{_d}: ``vgg({_d}, **kwargs)``.",
                                depth=_d)
    MODELS[f"vgg{_d}_bn"] = _named(vgg, f"vgg{_d}_bn",
                                   f"VGG-{_d} with batch norm: ``vgg({_d}, batch_norm=True, "
                                   "**kwargs)``.", depth=_d, batch_norm=True)
for _d in sorted(RESNET_CONFIGS):
    MODELS[f"resnet{_d}"] = _named(resnet, f"resnet{_d}",
                                   f"ResNet-{_d}: ``resnet({_d}, **kwargs)``.", depth=_d)
for _d in sorted(DENSENET_CONFIGS):
    MODELS[f"densenet{_d}"] = _named(densenet, f"densenet{_d}",
                                     f"DenseNet-{_d}: ``densenet({_d}, **kwargs)``.", depth=_d)
globals().update({k: v for k, v in MODELS.items() if k not in globals()})
__all__ += [k for k in MODELS if k not in __all__]


def list_models():
    """Names accepted by :func:`get_model`, e.g. ``'resnet18'``, ``'vgg16_bn'``."""
    return sorted(MODELS)


def get_model(name, **kwargs):
    """Build the model called ``name`` (see :func:`list_models`) with ``kwargs`` (e.g.
    ``variant='cifar'``, ``num_classes=...``, ``seed=...``)."""
    try:
        builder = MODELS[name]
    except KeyError:
        raise ValueError(f"get_model: unknown model {name!r}; choose one of "
                         f"{', '.join(list_models())}") from None
    return builder(**kwargs)
