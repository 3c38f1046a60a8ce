"""ResNetWrapper at every depth: layouts, parameter counts, both call signatures, the factory.

The deep networks are only traced (`eqx.filter_eval_shape`): shapes and parameter counts need no
memory and no compilation. One real forward pass runs at depth 18, width 8."""

import functools
import math
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import noprop_eqx as npx
from noprop_eqx.models import ResNetWrapper, apply_batched, make_backbone
from noprop_eqx.models._factory import BACKBONES, backbone_name
from noprop_eqx.models._resnet import parameter_counts as _parameter_counts

parameter_counts = functools.cache(_parameter_counts)  # several tests ask for the same counts
DEPTHS = (18, 34, 50, 101, 152)
# Residual blocks and whether they are bottlenecks (He et al. 2016, Table 1), written out.
BLOCKS = {18: (8, False), 34: (16, False), 50: (16, True), 101: (33, True), 152: (50, True)}
# torchvision's ImageNet ResNets (published parameter counts), to be turned into CIFAR ones:
# less the 1000-class FC and the 7×7 stem's extra (49 - 9)·3·64 weights. Norm layers have 2·c
# parameters both as BatchNorm (torchvision) and as GroupNorm (ours).
TORCHVISION = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}


def _leaf_count(tree) -> int:
    return sum(math.prod(a.shape) for a in jax.tree.leaves(tree) if hasattr(a, "shape"))


def _materialise(net, seed: int, stacked: int = 0):
    """Fills a network traced by `eqx.filter_eval_shape` with NumPy random numbers: weights
    scaled by 1/sqrt(fan-in), vectors (norm scales, biases) around 1; the first `stacked` axes
    stack blocks. Faster on CPU than JAX's own initialisation, which compiles a random-number
    kernel per weight shape."""
    rng = np.random.default_rng(seed)

    def fill(a):
        if not isinstance(a, jax.ShapeDtypeStruct):
            return a
        shape = a.shape[stacked:]
        if len(shape) <= 1:
            return jnp.asarray(rng.uniform(0.5, 1.5, a.shape), a.dtype)
        fan_in = math.prod(shape[1:])  # (out, in) linear or (out, in, k, k) conv weights
        return jnp.asarray(rng.normal(size=a.shape) / math.sqrt(fan_in), a.dtype)

    return jax.tree.map(fill, net)


def _resnet(*args, seed: int, **kwargs) -> ResNetWrapper:
    """A real `ResNetWrapper(*args, **kwargs)` with `_materialise`d weights."""
    shapes = eqx.filter_eval_shape(lambda k: ResNetWrapper(*args, **kwargs, key=k), jr.key(0))
    return _materialise(shapes, seed)


def _hand_count_resnet18(width: int, c_in: int = 3) -> int:
    """ResNet-18's stem and residual blocks, counted by hand: a k×k convolution c → c' has
    k·k·c·c' weights (no bias), a norm over c channels 2·c parameters (scale and offset)."""
    total = 3 * 3 * c_in * width + 2 * width  # stem conv + norm
    c = width
    for stage in range(4):
        c_out = width * 2**stage
        # First block: 3×3 c → c_out (stride 2 after stage 0), 3×3 c_out → c_out, two norms.
        total += 3 * 3 * c * c_out + 3 * 3 * c_out * c_out + 2 * (2 * c_out)
        if c != c_out:  # downsampling shortcut: 1×1 conv + norm
            total += c * c_out + 2 * c_out
        # Second block: two 3×3 c_out → c_out convolutions, two norms, identity shortcut.
        total += 2 * (3 * 3 * c_out * c_out) + 2 * (2 * c_out)
        c = c_out
    return total


def _head_count(features: int, num_classes: int, embed_dim: int, time_embed_dim: int) -> int:
    """image FC(256), label FC(256), [time FC(256)], FC(256), FC(m): weights and biases."""
    count = (features + 1) * 256 + (embed_dim + 1) * 256 + 257 * 256 + 257 * num_classes
    return count + ((time_embed_dim + 1) * 256 if time_embed_dim else 0)


def test_resnet18_parameter_count_by_hand():
    assert _hand_count_resnet18(64) == 11_168_832  # the familiar 11.17M CIFAR ResNet-18
    for width in (64, 8):
        image, dt = parameter_counts(18, width)
        assert image == _hand_count_resnet18(width)
        assert dt == image + _head_count(8 * width, 10, 10, 0)
        _, ct = parameter_counts(18, width, 64)
        assert ct == image + _head_count(8 * width, 10, 10, 64)


@pytest.mark.parametrize("depth", DEPTHS)
def test_image_branch_matches_torchvision(depth):
    bottleneck = BLOCKS[depth][1]
    features = 2048 if bottleneck else 512
    expected = TORCHVISION[depth] - (features * 1000 + 1000) - (49 - 9) * 3 * 64
    image, dt = parameter_counts(depth)
    assert image == expected
    assert dt == image + _head_count(features, 10, 10, 0)


def test_docstring_table_is_current():
    rows = re.findall(
        r"^\s*\|\s*(\d+)\s*\|([\d,\s]+)\|([\d,\s]+)\|([\d,\s]+)\|", ResNetWrapper.__doc__, re.M
    )
    table = {int(d): tuple(int(n.replace(",", "")) for n in ns) for d, *ns in rows}
    assert sorted(table) == list(DEPTHS)
    for depth, (image, dt, ct) in table.items():
        assert (image, dt) == parameter_counts(depth)
        assert ct == parameter_counts(depth, 64, 64)[1]


def _traced(depth, key):
    """Traces building a DT block and a CT/FM network (time_embed_dim 64) of `depth` at width
    64 and calling them on one 3×32×32 image. Returns both networks (shapes only), the DT
    block's feature map before pooling, and both networks' logits."""

    def run(key):
        k_dt, k_ct, k_z, k_x = jr.split(key, 4)
        dt = ResNetWrapper(10, depth, 64, 0, key=k_dt)
        ct = ResNetWrapper(10, depth, 64, 64, key=k_ct)
        z, x = jr.normal(k_z, (10,)), jr.normal(k_x, (3, 32, 32))
        h = jax.nn.relu(dt.stem_norm(dt.stem(x)))
        for block in dt.stages:
            h = block(h)
        return dt, ct, h, dt(z, x), ct(z, x, jnp.asarray(0.3))

    return eqx.filter_eval_shape(run, key)


@pytest.mark.parametrize("depth", DEPTHS)
def test_every_depth_traces_as_dt_block_and_ct_network(depth, getkey):
    num_blocks, bottleneck = BLOCKS[depth]
    dt, ct, h, dt_logits, ct_logits = _traced(depth, getkey())
    assert len(dt.stages) == len(ct.stages) == num_blocks
    assert {len(b.convs) for b in dt.stages} == {3 if bottleneck else 2}
    # The depth counts the stem, the blocks' convolutions (not the shortcuts) and one FC layer.
    assert 1 + sum(len(b.convs) for b in dt.stages) + 1 == depth
    assert dt.stem.weight.shape == (64, 3, 3, 3)  # 3×3 stem, stride 1, no max-pool:
    assert h.shape == (8 * 64 * (4 if bottleneck else 1), 4, 4)  # 32 → 32 → 16 → 8 → 4
    assert not dt.time_conditioned and ct.time_conditioned
    assert dt_logits.shape == ct_logits.shape == (10,)


def test_resnet18_forward(getkey):
    dt = _resnet(10, 18, 8, seed=0)
    ct = _resnet(10, 18, 8, 16, seed=1)
    image_branch = eqx.filter((dt.stem, dt.stem_norm, dt.stages), eqx.is_array)
    assert _leaf_count(image_branch) == _hand_count_resnet18(8)
    z, x = jr.normal(getkey(), (10,)), jr.normal(getkey(), (3, 32, 32))
    # Rows: (z, x, 0.3), then the image, the label embedding, the time changed in turn.
    zs, xs = jnp.stack([z, z, -z, z]), jnp.stack([x, -x, x, x])
    ts = jnp.asarray([0.3, 0.3, 0.3, 0.9])
    # One compilation for everything (eager op-by-op dispatch is slower on CPU).
    forward = eqx.filter_jit(
        lambda dt, ct: (apply_batched(dt, zs, xs), apply_batched(ct, zs, xs, ts))
    )
    out_dt, out_ct = forward(dt, ct)
    assert out_dt.shape == out_ct.shape == (4, 10)
    assert bool(jnp.all(jnp.isfinite(out_dt)) & jnp.all(jnp.isfinite(out_ct)))
    # The logits depend on the image and the label embedding, and the CT network's on t.
    for changed in (1, 2):
        assert not jnp.allclose(out_dt[0], out_dt[changed], atol=1e-4)
    for changed in (1, 2, 3):
        assert not jnp.allclose(out_ct[0], out_ct[changed], atol=1e-4)
    with pytest.raises(TypeError, match=r"time_conditioned=False: call it as f\(z, x\)"):
        dt(z, x, ts[0])
    with pytest.raises(TypeError, match=r"time_conditioned=True: call it as f\(z, x, t\)"):
        ct(z, x)


# (Non-int depths and widths are also caught by the jaxtyping annotations under pytest.)
@pytest.mark.parametrize("depth", (20, 0, 200, True))
def test_unsupported_depth(depth, getkey):
    message = re.escape(f"expected depth in [18, 34, 50, 101, 152], got {depth!r}")
    with pytest.raises(ValueError, match=message):
        ResNetWrapper(10, depth, key=getkey())


@pytest.mark.parametrize("width", (0, -8, True))
def test_width_not_a_positive_int(width, getkey):
    with pytest.raises(ValueError, match=f"expected width to be a positive int, got {width!r}"):
        ResNetWrapper(10, 18, width, key=getkey())


def test_width_groupnorm_cannot_split(getkey):
    # GroupNorm's 32 groups do not divide 48 or 40 or 80 channels; width 8 (8, 16, 32, 64
    # channels, bottleneck outputs 32 ... 256) is fine.
    with pytest.raises(ValueError, match=r"got width=48, giving \[48\]"):
        ResNetWrapper(10, 18, 48, key=getkey())
    with pytest.raises(ValueError, match=r"got width=40, giving \[40, 80\]"):
        ResNetWrapper(10, 50, 40, key=getkey())
    assert parameter_counts(50, 8)[0] > 0


def _factory(spec, time_conditioned, key):
    return eqx.filter_eval_shape(
        lambda k: make_backbone(
            spec,
            num_classes=10,
            embed_dim=10,
            image_shape=(3, 32, 32),
            time_conditioned=time_conditioned,
            key=k,
        ),
        key,
    )


def test_factory_names_every_depth(getkey):
    assert [b for b in BACKBONES if b.startswith("resnet")] == [f"resnet{d}" for d in DEPTHS]
    for depth in DEPTHS:
        net = _factory(f"resnet{depth}", depth == 101, getkey())
        assert isinstance(net, ResNetWrapper) and len(net.stages) == BLOCKS[depth][0]
        assert net.stem.weight.shape[0] == 64 and net.time_conditioned == (depth == 101)


def test_factory_width_and_callable(getkey):
    assert backbone_name("resnet18") == backbone_name("resnet18", 64) == "resnet18"
    assert backbone_name("resnet152", 32) == "resnet152-w32"
    assert backbone_name("paper", 64) == "paper"
    with pytest.raises(ValueError, match="only the ResNet backbones have a width"):
        backbone_name("paper", 32)
    net = _factory(backbone_name("resnet50", 16), False, getkey())
    assert net.stem.weight.shape[0] == 16 and net.image_fc.weight.shape == (256, 8 * 16 * 4)
    with pytest.raises(ValueError, match="got width=48"):
        _factory("resnet18-w48", False, getkey())
    with pytest.raises(ValueError, match="expected backbone to be one of"):
        _factory("resnet20", False, getkey())
    # A `key -> backbone` factory works as well as a name.
    net = _factory(lambda k: ResNetWrapper(10, 101, 8, 64, key=k), True, getkey())
    assert len(net.stages) == 33 and net.stem.weight.shape[0] == 8
    with pytest.raises(ValueError, match="backbone does not fit the model"):
        _factory(lambda k: ResNetWrapper(10, 18, 8, key=k), True, getkey())


def test_models_take_resnets(getkey):
    """A NoProp model takes a ResNet from a `key -> backbone` factory; NoPropDT also takes
    already-built stacked blocks. (By name, the models call `make_backbone`, tested above.)"""
    shape = (3, 32, 32)
    net = _resnet(10, 18, 8, 64, seed=2)
    fm = npx.NoPropFM(10, shape, backbone=lambda k: net, key=getkey())
    assert fm.net is net
    stacked = eqx.filter_eval_shape(
        eqx.filter_vmap(lambda k: ResNetWrapper(10, 18, 8, key=k)), jr.split(jr.key(0), 2)
    )
    blocks = _materialise(stacked, seed=3, stacked=1)
    dt = npx.NoPropDT(10, shape, num_blocks=2, blocks=blocks, key=getkey())
    assert dt.blocks is blocks
    with pytest.raises(ValueError, match="does not fit the model"):
        npx.NoPropFM(10, shape, backbone=lambda k: _resnet(10, 18, 8, seed=4), key=getkey())
