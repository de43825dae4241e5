"""Float tolerances of the tests, derived from the arithmetic.

One rounding to float32 changes a value ``x`` by at most ``EPS32 / 2 * |x|``
(EPS32 = 2 ** -23 ~ 1.2e-7). A result obtained from values of size at most
``magnitude`` through ``nb_roundings`` roundings (a sum of n terms: n - 1;
a product, an affine map of 3 terms: ~4; a format conversion: 1) is within
``nb_roundings * EPS32 / 2 * magnitude`` of the exact one. ``rounding_atol``
gives twice that: the bound between two float32 computations of the same
quantity by different kernels (batch sizes, thread counts, SIMD widths),
each within the half of it of the exact value.

Where a test is about logic rather than rounding and the error would grow
over many steps (tracking, training), it computes in float64 instead.
"""
import numpy as np

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)


def rounding_atol(magnitude, nb_roundings, eps=EPS32):
    """Absolute bound on the rounding error of ``nb_roundings`` float
    operations on values of size at most ``magnitude``."""
    return nb_roundings * eps * magnitude


def adam_weights_atol(learning_rate, nb_updates, gradient_atol,
                      adam_eps=1e-8):
    """How far two Adam trainings' weights drift apart, to first order,
    when their gradients differ by at most ``gradient_atol`` per update.

    One Adam step ``lr * m / (sqrt(v) + adam_eps)`` moves by at most
    ``lr / adam_eps`` times an error of the gradient (at a gradient of 0);
    the errors of successive updates add up.
    """
    return nb_updates * learning_rate / adam_eps * gradient_atol
