"""
conv -> ReLU -> max-pool on a photograph
========================================

The first block of every CNN, one stage at a time, with the array shapes. An 80x80 colour
picture becomes a batch ``(1, 3, 80, 80)``. One filter that looks at all three colour
channels -- the course's "3x1x3x3" filter, in cnncore's (and PyTorch's) layout a weight of
shape ``(C_out=1, C_in=3, 3, 3)`` -- holds Sobel-x on each channel; the three responses are
summed. No padding: the output is ``(1, 1, 78, 78)``. ReLU keeps the positive responses
(edges where the picture gets brighter to the right) and a 2x2 max-pool halves each side.
"""

import matplotlib.pyplot as plt
import numpy as np

from cnncore import functional as F
from cnncore import reference as R
from cnncore.examples.filters import SOBEL_X, load_image

rgb = load_image(size=(80, 80), square=True)                 # (80, 80, 3)
x = np.ascontiguousarray(rgb.transpose(2, 0, 1)[None])       # (1, 3, 80, 80)
weight = np.repeat(SOBEL_X[None, None], 3, axis=1)           # (1, 3, 3, 3)

z = F.conv2d(x, weight)
a = F.relu(z)
p, indices = F.max_pool2d(a, 2, return_indices=True)
for name, v in [("x", x), ("conv", z), ("relu", a), ("max-pool", p)]:
    print(f"{name:9s}{v.shape}")

# %%
# The NumPy twin in :mod:`cnncore.reference` computes the same thing, obviously and slowly:

print("conv matches the reference:", np.allclose(z, R.conv2d(x, weight), atol=1e-5))
print("pool matches the reference:", np.array_equal(p, R.max_pool2d(a, 2)))

# %%
fig, axes = plt.subplots(1, 4, figsize=(13, 3.8))
lim = float(np.abs(z).max())
panels = [(rgb, None, {}, f"input {rgb.shape}\nbatch {x.shape}"),
          (z[0, 0], "RdBu_r", {"vmin": -lim, "vmax": lim}, f"conv2d -> {z.shape}"),
          (a[0, 0], "gray", {"vmin": 0}, f"relu -> {a.shape}"),
          (p[0, 0], "gray", {"vmin": 0}, f"max_pool2d 2x2 -> {p.shape}")]
for ax, (img, cmap, kw, title) in zip(axes, panels):
    im = ax.imshow(img, cmap=cmap, interpolation="nearest", **kw)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    if cmap is not None:
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
fig.tight_layout()
plt.show()

# %%
# The backward pass
# -----------------
# Send a gradient of ones back through the three stages. Max-pool routes each window's
# gradient to the position of its maximum (the saved ``indices``); ReLU lets it through
# where the conv output was positive; the conv's input gradient spreads it back over the
# three colour channels.

g_p = np.ones_like(p)
g_a = F.max_pool2d_backward(g_p, a, 2, indices=indices)
g_z = F.relu_backward(g_a, z)
g_x, g_w, g_b = F.conv2d_backward(g_z, x, weight)
print("gradient reaches", int((g_a != 0).sum()), "of", g_a.size, "ReLU outputs")

fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
for ax, (img, title) in zip(axes, [(g_a[0, 0], "max-pool backward: one 1 per window"),
                                   (g_z[0, 0], "through the ReLU"),
                                   (g_x[0].sum(axis=0), "conv backward: input gradient")]):
    ax.imshow(img, cmap="RdBu_r", vmin=-np.abs(img).max(), vmax=np.abs(img).max(),
              interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()
fig.tight_layout()
plt.show()
