"""
The nine classic 3x3 filters
============================

Sharpen, edges, surround, Sobel, blur and emboss: the kernels every CNN course starts with,
applied to a photograph in **one** :func:`cnncore.functional.conv2d` call. The nine
kernels are stacked into a weight of shape ``(9, 1, 3, 3)`` -- nine output channels, one
input channel -- and the gray-scale image is a batch of one, ``(1, 1, H, W)``.

The photograph is the portrait of Grace Hopper that ships with matplotlib, so this runs
offline. ``python -m cnncore.examples.filters photo.jpg`` does the same on your own picture.
"""

import matplotlib.pyplot as plt
import numpy as np

from cnncore import functional as F
from cnncore.examples.filters import KERNELS, load_image, to_gray

rgb = load_image(size=192)               # (H, W, 3) float32 in [0, 1]
gray = to_gray(rgb)
print("image", gray.shape)

# %%
# One call for the nine filters
# -----------------------------
# ``padding=1`` keeps the size: each output channel is one filtered image.

weight = np.stack([np.asarray(k, dtype=np.float32) for k in KERNELS.values()])[:, None]
y = F.conv2d(gray[None, None], weight, padding=1)
print("weight", weight.shape, "-> output", y.shape)

# %%
# Responses are clipped to [0, 1], as a picture would be: the edge detectors show bright
# edges on black.

fig, axes = plt.subplots(3, 3, figsize=(8, 9.5))
for ax, (name, kernel), response in zip(axes.flat, KERNELS.items(), y[0]):
    ax.imshow(np.clip(response, 0, 1), cmap="gray", vmin=0, vmax=1)
    rows = "; ".join(" ".join(f"{v:g}" for v in row) for row in kernel)
    ax.set_title(f"{name}\n[{rows}]", fontsize=9)
    ax.set_axis_off()
fig.suptitle("The classic 3x3 kernels through cnncore.functional.conv2d")
fig.tight_layout()
plt.show()

# %%
# Cross-correlation, not convolution
# ----------------------------------
# Like PyTorch, cnncore does not flip the kernel. Flipping Sobel-x turns it into its
# negative, so the flipped kernel's response is the original's, negated:

sobel_x = weight[7:8]
flipped = sobel_x[:, :, ::-1, ::-1].copy()
a = F.conv2d(gray[None, None], sobel_x, padding=1)
b = F.conv2d(gray[None, None], flipped, padding=1)
print("flipped Sobel-x gives the negated response:", np.allclose(a, -b))
