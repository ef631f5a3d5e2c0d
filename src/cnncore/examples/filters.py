"""The classic 3x3 filters and a conv -> ReLU -> max-pool walk-through, all through cnncore's
``conv2d`` (the course material's first chapter).

Run: ``python -m cnncore.examples.filters [IMAGE] [--out DIR] [--size N]``

1. The nine classic kernels -- sharpen, vertical edge, surround, Sobel-y, identity,
   horizontal edge, blur, Sobel-x, emboss -- are applied to the gray-scale image in one
   :func:`cnncore.functional.conv2d` call (a ``(9, 1, 3, 3)`` weight, padding 1) and drawn as a
   3x3 grid: ``filters_grid.png``. Outputs are clipped to the displayable range [0, 1], as a
   picture would be: edge detectors show bright edges on black.
2. The walk-through: an 80x80x3 colour picture, as a ``(1, 3, 80, 80)`` batch, goes through
   one Sobel-x filter -- the course's "3x1x3x3" filter, i.e. in cnncore's (and PyTorch's)
   layout a weight of shape ``(C_out=1, C_in=3, 3, 3)``: the same Sobel-x kernel on each of
   the three colour channels, the three responses summed -- giving ``(1, 1, 78, 78)`` (no
   padding), then ReLU ``(1, 1, 78, 78)`` and a 2x2 max-pool ``(1, 1, 39, 39)``. The four
   stages are drawn side by side with their shapes in the titles: ``conv_relu_pool.png``.

IMAGE is any PNG or JPEG file (read with Pillow). The default is a real photograph that
ships with matplotlib, so the demo runs offline: the portrait of Grace Hopper in
matplotlib's sample data (``matplotlib.cbook.get_sample_data('grace_hopper.jpg')``).
"""

import argparse
import os

import numpy as np

from .. import functional as F

#: The nine classic kernels, in the order of the 3x3 grid (row by row).
KERNELS = {
    "sharpen": [[0, -1, 0], [-1, 5, -1], [0, -1, 0]],
    "vertical edge": [[0, 0, 0], [-1, 2, -1], [0, 0, 0]],
    "surround": [[1, 1, 1], [1, -9, 1], [1, 1, 1]],
    "Sobel-y": [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],
    "identity": [[0, 0, 0], [0, 1, 0], [0, 0, 0]],
    "horizontal edge": [[0, -1, 0], [0, 2, 0], [0, -1, 0]],
    "blur": [[0.11, 0.11, 0.11], [0.11, 0.11, 0.11], [0.11, 0.11, 0.11]],
    "Sobel-x": [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],
    "emboss": [[2, 0, 0], [0, -1, 0], [0, 0, -1]],
}

SOBEL_X = np.array(KERNELS["Sobel-x"], dtype=np.float32)


def default_image_path():
    """The bundled photograph: matplotlib's sample image of Grace Hopper."""
    try:
        from matplotlib import cbook
    except ImportError as e:
        raise SystemExit("the default image comes with matplotlib: pip install matplotlib, or "
                         "pass the path of a PNG / JPEG image") from e
    return cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)


def load_image(path=None, size=None, square=False):
    """Read an image as float32 ``(H, W, 3)`` RGB in [0, 1].

    Parameters
    ----------
    path : str, optional
        A PNG / JPEG file; default: :func:`default_image_path`.
    size : int or (W, H), optional
        An int resizes the longer side to ``size`` (keeping the aspect ratio); a pair resizes
        to exactly that size.
    square : bool
        Crop the central square first.
    """
    from PIL import Image

    path = default_image_path() if path is None else path
    with Image.open(path) as im:
        im = im.convert("RGB")
        if square:
            w, h = im.size
            s = min(w, h)
            im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        if size is not None:
            if isinstance(size, (tuple, list)):
                new = (int(size[0]), int(size[1]))
            else:
                scale = int(size) / max(im.size)
                new = (max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale)))
            im = im.resize(new, Image.LANCZOS)
        return np.asarray(im, dtype=np.float32) / 255.0


def to_gray(rgb):
    """ITU-R 601 luma of an ``(H, W, 3)`` image."""
    return (rgb @ np.array([0.299, 0.587, 0.114], dtype=rgb.dtype)).astype(np.float32)


def apply_filters(gray, kernels=KERNELS):
    """All ``kernels`` on a gray ``(H, W)`` image in one ``conv2d`` call (padding 1).

    Returns ``{name: (H, W) float32 response}`` (not clipped)."""
    weight = np.stack([np.asarray(k, dtype=np.float32) for k in kernels.values()])[:, None]
    y = F.conv2d(np.ascontiguousarray(gray, dtype=np.float32)[None, None], weight, padding=1)
    return {name: y[0, i] for i, name in enumerate(kernels)}


def conv_relu_pool(rgb):
    """The walk-through on an ``(H, W, 3)`` image: returns ``(x, z, a, p)`` with x the
    ``(1, 3, H, W)`` batch, z = conv2d(x, Sobel-x on every channel) ``(1, 1, H-2, W-2)``,
    a = relu(z) and p = max_pool2d(a, 2)."""
    x = np.ascontiguousarray(np.transpose(rgb, (2, 0, 1))[None], dtype=np.float32)
    weight = np.repeat(SOBEL_X[None, None], 3, axis=1)  # (C_out=1, C_in=3, 3, 3)
    z = F.conv2d(x, weight)
    a = F.relu(z)
    p = F.max_pool2d(a, 2)
    return x, z, a, p


def plot_filters_grid(gray, responses, path, source=""):
    """The 3x3 grid of the responses (clipped to [0, 1]), each titled with its kernel."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 3, figsize=(9.5, 11))
    for ax, (name, y) in zip(axes.flat, responses.items()):
        ax.imshow(np.clip(y, 0, 1), cmap="gray", vmin=0, vmax=1)
        k = KERNELS[name]
        ax.set_title(f"{name}\n[{'; '.join(' '.join(f'{v:g}' for v in r) for r in k)}]",
                     fontsize=9)
        ax.set_axis_off()
    fig.suptitle(f"The classic 3x3 kernels through cnncore.functional.conv2d "
                 f"(gray {gray.shape[0]}x{gray.shape[1]}, padding 1, clipped to [0, 1])"
                 + (f"\n{source}" if source else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_walkthrough(rgb, x, z, a, p, path):
    """Input, conv, ReLU and max-pool side by side, the shapes in the titles."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(15, 4.4))
    lim = float(np.abs(z).max()) or 1.0
    panels = [
        (rgb, None, {}, f"input picture {rgb.shape[0]}x{rgb.shape[1]}x{rgb.shape[2]}\n"
                        f"batch x {tuple(x.shape)}"),
        (z[0, 0], "RdBu_r", {"vmin": -lim, "vmax": lim},
         f"conv2d, weight (1, 3, 3, 3) = Sobel-x\non each channel, summed -> {tuple(z.shape)}"),
        (a[0, 0], "gray", {"vmin": 0}, f"relu -> {tuple(a.shape)}"),
        (p[0, 0], "gray", {"vmin": 0}, f"max_pool2d 2x2 -> {tuple(p.shape)}"),
    ]
    for ax, (img, cmap, kw, title) in zip(axes, panels):
        im = ax.imshow(img, cmap=cmap, interpolation="nearest", **kw)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        if cmap is not None:
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    fig.suptitle("conv -> ReLU -> max-pool with cnncore.functional", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m cnncore.examples.filters",
        description="The classic 3x3 filters and a conv -> ReLU -> max-pool walk-through "
                    "through cnncore's conv2d.")
    parser.add_argument("image", nargs="?", default=None,
                        help="a PNG or JPEG image (default: the photograph of Grace Hopper "
                             "in matplotlib's sample data)")
    parser.add_argument("--out", default=".", help="output directory (default: .)")
    parser.add_argument("--size", type=int, default=256,
                        help="longer side of the image for the filter grid (default 256; "
                             "0: keep the image's size)")
    args = parser.parse_args(argv)
    if args.size < 0:
        parser.error("--size must be >= 0")
    source = args.image or default_image_path()
    os.makedirs(args.out, exist_ok=True)

    rgb = load_image(source, size=args.size or None)
    gray = to_gray(rgb)
    responses = apply_filters(gray)
    grid = plot_filters_grid(gray, responses, os.path.join(args.out, "filters_grid.png"),
                             source=os.path.basename(source))
    print(f"image {os.path.basename(source)}: gray {gray.shape[0]}x{gray.shape[1]}; nine 3x3 "
          f"kernels in one conv2d call, weight (9, 1, 3, 3)")
    for name, y in responses.items():
        print(f"  {name:16s} response in [{y.min():7.3f}, {y.max():7.3f}]")
    print(f"saved {grid}")

    small = load_image(source, size=(80, 80), square=True)
    x, z, a, p = conv_relu_pool(small)
    print(f"walk-through: picture {small.shape[0]}x{small.shape[1]}x{small.shape[2]} -> x "
          f"{tuple(x.shape)}; conv with Sobel-x weight (1, 3, 3, 3) -> {tuple(z.shape)}; relu "
          f"-> {tuple(a.shape)}; max-pool 2x2 -> {tuple(p.shape)}")
    walk = plot_walkthrough(small, x, z, a, p, os.path.join(args.out, "conv_relu_pool.png"))
    print(f"saved {walk}")
    return responses, (x, z, a, p)


if __name__ == "__main__":
    main()
