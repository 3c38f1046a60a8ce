import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from noprop_eqx.models import PaperCTNet, PaperDTBlock, ResNetWrapper, SimpleCNN


def _count(module) -> int:
    is_array = lambda a: isinstance(a, jax.ShapeDtypeStruct) or eqx.is_array(a)
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(module) if is_array(a))


def test_paper_block_matches_the_papers_parameter_count(getkey):
    # The paper's table: 0.92M per MNIST block, 1.22M per CIFAR-10 block (ours adds only the
    # LayerNorm scales/offsets, 2 x 1408 parameters).
    # Shapes only (no arrays): the count needs no memory and no random numbers.
    mnist = eqx.filter_eval_shape(PaperDTBlock, 10, 10, (1, 28, 28), key=getkey())
    cifar = eqx.filter_eval_shape(PaperDTBlock, 10, 10, (3, 32, 32), key=getkey())
    assert _count(mnist) - 2 * 1408 == pytest.approx(0.92e6, rel=0.01)
    assert _count(cifar) - 2 * 1408 == pytest.approx(1.22e6, rel=0.01)


# Every backbone, as (constructor, t): t is None for a DT block, a time for CT/FM networks.
BACKBONES = [
    (lambda k: PaperDTBlock(10, 20, (1, 28, 28), key=k), None),
    (lambda k: PaperCTNet(10, 20, (1, 28, 28), key=k), 0.5),
    (lambda k: SimpleCNN(10, 0, embed_dim=20, image_shape=(1, 28, 28), key=k), None),
    (lambda k: SimpleCNN(10, 32, embed_dim=20, image_shape=(3, 32, 32), key=k), 0.5),
    (lambda k: ResNetWrapper(10, 18, 8, 16, embed_dim=20, key=k), 0.5),
]


@pytest.mark.parametrize("net, t", BACKBONES)
def test_backbones_give_logits_and_dropout_only_with_a_key(getkey, net, t):
    net = net(getkey())
    c, h, w = net.image_shape
    z, x = jnp.ones(20), jr.normal(getkey(), (c, h, w))
    args = (z, x) if t is None else (z, x, jnp.asarray(t))
    run = eqx.filter_jit(lambda n, a, k: n(*a, key=k))
    out = run(net, args, None)
    assert out.shape == (10,) and bool(jnp.all(jnp.isfinite(out)))
    # Without a key, dropout is off: the network is deterministic.
    assert jnp.array_equal(out, run(net, args, None))
    # With a key, dropout is on: the output moves, the same key repeats it, another key differs.
    k1, k2 = getkey(), getkey()
    with_k1 = run(net, args, k1)
    assert bool(jnp.all(jnp.isfinite(with_k1)))
    assert not jnp.allclose(with_k1, out, atol=1e-6)
    assert jnp.array_equal(with_k1, run(net, args, k1))
    assert not jnp.allclose(with_k1, run(net, args, k2), atol=1e-6)


def test_time_input_must_match_the_backbone(getkey):
    dt_block = SimpleCNN(10, 0, image_shape=(1, 8, 8), key=getkey())
    with pytest.raises(TypeError, match="time_conditioned=False: call it as f\\(z, x\\)"):
        dt_block(jnp.zeros(10), jnp.zeros((1, 8, 8)), jnp.asarray(0.5))
    with pytest.raises(TypeError, match="call it as net\\(z, x, t\\)"):
        PaperCTNet(10, 10, key=getkey())(jnp.zeros(10), jnp.zeros((1, 28, 28)))


@pytest.mark.parametrize("net, t", [(net, None if t is None else 0.3) for net, t in BACKBONES])
def test_encode_then_decode_equals_the_network(getkey, net, t):
    # The inference split used by the CT/FM solvers: net(z, x, t) == decode(z, encode(x), t).
    net = net(getkey())
    z, x = jr.normal(getkey(), (20,)), jr.normal(getkey(), net.image_shape)
    t = None if t is None else jnp.asarray(t)
    expected = net(z, x) if t is None else net(z, x, t)
    got = net.decode(z, net.encode(x), t)
    assert jnp.allclose(got, expected, rtol=1e-5, atol=1e-5)
