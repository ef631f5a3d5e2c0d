"""
LeNet-5 on MNIST: training curves, filters and feature maps
===========================================================

A short training of LeNet-5 (61,706 parameters) on the first 4,000 MNIST training images,
two epochs with Adam, then a look inside: the six 5x5 filters of the first convolution
and the feature maps one test digit produces after each convolution's ReLU.

``python -m cnncore.examples.mnist --viz`` trains on all 60,000 images for 10 epochs (about
a minute on two cores, >= 99 % test accuracy) and saves the same pictures.

MNIST is read from the cache (``~/.cache/cnncore/mnist``), else downloaded once
(``python tools/fetch_mnist.py`` fills the cache).
"""

import matplotlib.pyplot as plt
import numpy as np

from cnncore import viz
from cnncore.datasets import load_mnist
from cnncore.losses import SoftmaxCrossEntropy
from cnncore.model import lenet5
from cnncore.optim import Adam
from cnncore.trainer import Trainer

(x_train, y_train), (x_test, y_test) = load_mnist()
x_train = x_train[:4000].astype(np.float32)[:, None] / 255
y_train = y_train[:4000]
x_test = x_test[:2000].astype(np.float32)[:, None] / 255
y_test = y_test[:2000]

model = lenet5(seed=0)
trainer = Trainer(model, SoftmaxCrossEntropy(), Adam(model.parameters(), lr=2e-3))
history = trainer.fit(x_train, y_train, epochs=2, batch_size=64,
                      validation_data=(x_test, y_test), seed=0, verbose=0)
print(f"test accuracy on {len(x_test)} images: {history['val_accuracy'][-1]:.4f}")
print(f"{np.mean(history['images_per_sec']):,.0f} training images/s")

# %%
# Training curves
# ---------------

fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
for ax, metric in zip(axes, ("loss", "accuracy")):
    ax.plot(history.epoch, history[metric], "o-", label=metric)
    ax.plot(history.epoch, history["val_" + metric], "s--", label="val_" + metric)
    ax.set_xlabel("epoch")
    ax.set_xticks(history.epoch)
    ax.grid(True, alpha=0.3)
    ax.legend()
fig.tight_layout()
plt.show()

# %%
# The first layer's filters
# -------------------------
# :func:`cnncore.viz.plot_filters` draws the six 5x5 kernels on one symmetric gray scale
# (mid-gray is 0, so the sign shows).

viz.plot_filters(model, ncols=6)
plt.show()

# %%
# Feature maps of one test digit
# ------------------------------
# After the first ReLU: six 28x28 maps; after the second: sixteen 10x10 maps.

viz.plot_feature_maps(model.eval(), x_test[0], max_maps=16)
plt.show()
