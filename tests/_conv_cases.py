"""Shared description of a convolution test case (tests/test_conv_tiles.py,
tests/test_conv_big.py)."""


def conv_case(n, c_in, c_out, h, w, k, stride=1, padding=0, dilation=1, groups=1, bias=True):
    """A case: batch ``n``, channels, image ``h x w``, kernel ``k`` (int or pair), and the
    hyper-parameters as ``hp``, keyword arguments of ``conv2d``."""
    k = (k, k) if isinstance(k, int) else tuple(k)
    return dict(n=n, c_in=c_in, c_out=c_out, h=h, w=w, k=k, bias=bias,
                hp=dict(stride=stride, padding=padding, dilation=dilation, groups=groups))


#: The odd shapes every convolution path is tested on.
ODD_CASES = {
    "1x1-image": conv_case(1, 3, 4, 1, 1, 1),
    "1x1-image-padded": conv_case(1, 2, 3, 1, 1, 3, padding=1),
    "kernel-equals-input": conv_case(1, 3, 2, 4, 5, (4, 5)),
    "stride-larger-than-kernel": conv_case(2, 2, 3, 10, 11, 2, stride=3),
    "stride-larger-than-input": conv_case(1, 2, 2, 4, 4, 2, stride=5),
}
