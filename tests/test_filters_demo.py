"""The classic-filter demo (cnncore.examples.filters) and cnncore.viz."""

import numpy as np
import pytest
from scipy.signal import correlate2d

from cnncore import zoo
from cnncore.examples import filters as demo


def test_the_nine_kernels():
    assert list(demo.KERNELS) == ["sharpen", "vertical edge", "surround", "Sobel-y", "identity",
                                  "horizontal edge", "blur", "Sobel-x", "emboss"]
    k = {n: np.array(v, dtype=float) for n, v in demo.KERNELS.items()}
    assert k["sharpen"].tolist() == [[0, -1, 0], [-1, 5, -1], [0, -1, 0]]
    assert k["vertical edge"].tolist() == [[0, 0, 0], [-1, 2, -1], [0, 0, 0]]
    assert k["surround"].tolist() == [[1, 1, 1], [1, -9, 1], [1, 1, 1]]
    assert k["Sobel-y"].tolist() == [[-1, -2, -1], [0, 0, 0], [1, 2, 1]]
    assert k["identity"].tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert k["horizontal edge"].tolist() == [[0, -1, 0], [0, 2, 0], [0, -1, 0]]
    assert np.all(k["blur"] == 0.11)
    assert k["Sobel-x"].tolist() == [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
    assert k["emboss"].tolist() == [[2, 0, 0], [0, -1, 0], [0, 0, -1]]


def test_filters_equal_scipy_cross_correlation(rng):
    gray = rng.random((23, 31)).astype(np.float32)
    out = demo.apply_filters(gray)
    assert list(out) == list(demo.KERNELS)
    for name, y in out.items():
        want = correlate2d(gray.astype(np.float64), np.array(demo.KERNELS[name], float),
                           mode="same", boundary="fill")
        assert y.shape == gray.shape and y.dtype == np.float32
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_array_equal(out["identity"], gray)


def test_conv_relu_pool_walkthrough(rng):
    rgb = rng.random((80, 80, 3)).astype(np.float32)
    x, z, a, p = demo.conv_relu_pool(rgb)
    assert x.shape == (1, 3, 80, 80)
    assert z.shape == (1, 1, 78, 78) and a.shape == (1, 1, 78, 78) and p.shape == (1, 1, 39, 39)
    sobel = np.array(demo.KERNELS["Sobel-x"], float)
    # one (1, 3, 3, 3) filter: Sobel-x on each colour channel, the three responses summed
    want = sum(correlate2d(rgb[:, :, c].astype(np.float64), sobel, mode="valid")
               for c in range(3))
    np.testing.assert_allclose(z[0, 0], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(a, np.maximum(z, 0))
    np.testing.assert_array_equal(p[0, 0], a[0, 0].reshape(39, 2, 39, 2).max(axis=(1, 3)))


def _png_size(path):
    from PIL import Image
    with Image.open(path) as im:
        return im.size


def test_demo_on_the_bundled_photograph(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    pytest.importorskip("PIL")
    responses, (x, z, a, p) = demo.main(["--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "grace_hopper.jpg" in out
    assert ("picture 80x80x3 -> x (1, 3, 80, 80); conv with Sobel-x weight (1, 3, 3, 3) -> "
            "(1, 1, 78, 78); relu -> (1, 1, 78, 78); max-pool 2x2 -> (1, 1, 39, 39)") in out
    assert max(responses["identity"].shape) == 256
    # a real photograph: the identity is not flat, the edge kernels respond
    assert responses["identity"].std() > 0.1 and np.abs(responses["Sobel-x"]).max() > 1
    w, h = _png_size(tmp_path / "filters_grid.png")
    assert w > 800 and h > 900
    w, h = _png_size(tmp_path / "conv_relu_pool.png")
    assert w > 1200 and h > 350
    assert p.shape == (1, 1, 39, 39)


def test_demo_on_a_user_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    Image = pytest.importorskip("PIL.Image")
    yy, xx = np.mgrid[0:50, 0:70]
    img = np.stack([xx * 3, yy * 5, (xx + yy) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    path = tmp_path / "mine.png"
    Image.fromarray(img).save(path)
    responses, (x, z, a, p) = demo.main([str(path), "--out", str(tmp_path / "o"), "--size", "0"])
    assert responses["identity"].shape == (50, 70)
    np.testing.assert_allclose(responses["identity"],
                               demo.to_gray(img.astype(np.float32) / 255), atol=1e-6)
    assert x.shape == (1, 3, 80, 80) and p.shape == (1, 1, 39, 39)
    assert (tmp_path / "o" / "filters_grid.png").exists()
    assert (tmp_path / "o" / "conv_relu_pool.png").exists()
    assert "mine.png" in capsys.readouterr().out


# ---------------------------------------------------------------------- cnncore.viz
def test_viz_filters_and_feature_maps(tmp_path):
    pytest.importorskip("matplotlib")
    from cnncore import viz
    lenet = zoo.lenet5(seed=0)
    assert viz.first_conv(lenet) is lenet[0]
    x = np.random.default_rng(0).random((1, 28, 28)).astype(np.float32)
    maps = viz.feature_maps(lenet, x)
    assert list(maps)[:6] == ["0", "1", "2", "3", "4", "5"]
    assert maps["1"].shape == (6, 28, 28) and maps["4"].shape == (16, 10, 10)
    assert maps["11"].shape == (10,)
    np.testing.assert_allclose(maps["11"], lenet.predict(x[None])[0], rtol=1e-6)
    p1 = viz.plot_filters(lenet, str(tmp_path / "f.png"))
    p2 = viz.plot_feature_maps(lenet, x, str(tmp_path / "m.png"))
    assert _png_size(p1)[0] > 300 and _png_size(p2)[1] > 400

    # an RGB first layer, and a zoo model with nested named containers
    r = zoo.resnet(18, variant="cifar", width=4)
    r.train()
    maps = viz.feature_maps(r, np.zeros((3, 32, 32), np.float32))
    assert r.training  # mode restored
    assert maps["relu"].shape == (4, 32, 32) and maps["layer2.0"].shape == (8, 16, 16)
    assert maps["layer4"].shape == (32, 4, 4) and maps["fc"].shape == (10,)
    viz.plot_filters(r, str(tmp_path / "rf.png"))
    viz.plot_feature_maps(r, np.zeros((3, 32, 32), np.float32), str(tmp_path / "rm.png"),
                          layers=["relu", "layer3"])
    with pytest.raises(ValueError, match="no output named"):
        viz.plot_feature_maps(r, np.zeros((3, 32, 32), np.float32), layers=["nope"])
    with pytest.raises(ValueError, match="one sample"):
        viz.feature_maps(r, np.zeros((2, 3, 32, 32), np.float32))
