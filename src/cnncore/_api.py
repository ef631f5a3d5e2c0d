"""The names of the public kernels: :mod:`cnncore.functional` implements each one and
:mod:`cnncore.reference` holds its NumPy twin, with the same signature."""

KERNELS = (
    "conv2d", "conv2d_backward", "conv1d", "conv1d_backward",
    "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
    "global_avg_pool2d", "global_avg_pool2d_backward",
    "relu", "relu_backward", "leaky_relu", "leaky_relu_backward",
    "sigmoid", "sigmoid_backward", "tanh", "tanh_backward",
    "linear", "linear_backward", "softmax", "softmax_cross_entropy", "mse_loss",
)

# Normalisation, dropout and the fused residual epilogue (functional.norm: batch norm and
# add_relu compiled, LRN and dropout vectorised NumPy in cnncore._norm_kernels), with their
# twins in cnncore._norm_reference; exported by functional and reference alike.
NORM_KERNELS = (
    "batch_norm", "batch_norm_backward", "local_response_norm",
    "local_response_norm_backward", "dropout", "dropout_backward", "add_relu",
)
