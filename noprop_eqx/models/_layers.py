"""Fast building blocks shared by the backbones: inverted dropout from a counter-based hash,
convolutions in channels-last (HWC) layout, and conv → ReLU → max-pool with the pool first.

All three exist for speed and are tested against the plain formulations (`tests/test_layers.py`):

- Dropout masks drawn with `jax.random.bernoulli` under `vmap` (one key per example) cost about a
  fifth of a paper-network NoProp-DT step on CPU, in the Threefry hash alone. Here two 32-bit
  seeds per call are drawn with `jax.random`, and each element's keep decision comes from an
  integer hash of (seeds, element index): a few fused integer operations per element.
- XLA:CPU runs channels-last convolutions faster than channels-first ones; the weights stay in
  `eqx.nn.Conv2d`'s OIHW layout and are transposed inside the compiled step.
- `conv_pool_relu_hwc` pools before it adds the bias and takes the ReLU (the same function), so
  the elementwise work and its gradient run on a map a quarter of the size.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

_GOLDEN = 0x9E3779B9  # 2^32 / golden ratio: spreads consecutive indices over the 32-bit range


def _mix32(h: Array) -> Array:
    """MurmurHash3's 32-bit finaliser: a bijection on uint32 with full avalanche."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def hash_bits(key: PRNGKeyArray, shape: tuple[int, ...]) -> Array:
    """Uniform uint32 words of the given shape: the hash of each element's index, keyed by two
    words drawn from `key`. Counter-based like Threefry or Philox, with a cheaper mixing
    function; enough for dropout masks, not for cryptography."""
    seeds = jr.bits(key, (2,), jnp.uint32)
    size = 1
    for s in shape:
        size *= s
    index = jax.lax.iota(jnp.uint32, size).reshape(shape)
    return _mix32(_mix32(index * jnp.uint32(_GOLDEN) + seeds[0]) ^ seeds[1])


def dropout(
    x: Float[Array, "*shape"], p: float, key: PRNGKeyArray | None
) -> Float[Array, "*shape"]:
    """Inverted dropout: each element is zeroed with probability `p` and the survivors are scaled
    by 1/(1 - p), so the expectation is x. The identity when `key` is None or `p == 0`."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"expected a dropout probability in [0, 1), got {p}")
    if key is None or p == 0.0:
        return x
    threshold = jnp.uint32(min(round(p * 2.0**32), 2**32 - 1))
    keep = hash_bits(key, x.shape) >= threshold
    return jnp.where(keep, x / (1.0 - p), jnp.zeros_like(x))


def conv_hwc(
    conv: eqx.nn.Conv2d, x: Float[Array, "h w c"], *, bias: bool = True
) -> Float[Array, "h2 w2 c2"]:
    """`conv` applied to a channels-last image: equal to `conv(x.transpose(2, 0, 1))` transposed
    back, computed as an NHWC/HWIO convolution. `bias=False` leaves out `conv.bias` (for callers
    that add it later, see `conv_pool_relu_hwc`)."""
    if conv.padding_mode != "ZEROS":
        raise ValueError(f"conv_hwc supports zero padding only, got {conv.padding_mode!r}")
    y = jax.lax.conv_general_dilated(
        x[None],
        jnp.transpose(conv.weight, (2, 3, 1, 0)),
        window_strides=conv.stride,
        padding=conv.padding,
        rhs_dilation=conv.dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=conv.groups,
    )[0]
    return y if conv.bias is None or not bias else y + conv.bias.reshape(1, 1, -1)


def max_pool_hwc(x: Float[Array, "h w c"]) -> Float[Array, "h2 w2 c"]:
    """2×2 max pooling with stride 2 of a channels-last image (odd edges dropped), as the maximum
    of the window's four strided views. On XLA:CPU its gradient (three selects) is cheaper than
    that of a reshape-and-reduce or of `lax.reduce_window`."""
    h, w, _ = x.shape
    h2, w2 = 2 * (h // 2), 2 * (w // 2)
    top = jnp.maximum(x[0:h2:2, 0:w2:2], x[0:h2:2, 1:w2:2])
    bottom = jnp.maximum(x[1:h2:2, 0:w2:2], x[1:h2:2, 1:w2:2])
    return jnp.maximum(top, bottom)


def conv_pool_relu_hwc(conv: eqx.nn.Conv2d, x: Float[Array, "h w c"]) -> Float[Array, "h2 w2 c2"]:
    """`max_pool_hwc(relu(conv_hwc(conv, x)))`, computed as `relu(max_pool_hwc(conv without its
    bias) + bias)`. Both are the same function: a per-channel bias is constant over each pooling
    window and ReLU is monotone, so both commute with the max. This order adds the bias and takes
    the ReLU (and their gradients) on the pooled map, a quarter of the size: paper-network
    NoProp-DT and backprop training steps ran 1.06x faster on CPU
    (`benchmarks/studies/pool_order.py`)."""
    y = max_pool_hwc(conv_hwc(conv, x, bias=False))
    if conv.bias is not None:
        y = y + conv.bias.reshape(1, 1, -1)
    return jax.nn.relu(y)
