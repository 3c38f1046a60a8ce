"""Bad input gets a clear ValueError/TypeError at the public entry points, matched by message."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import noprop_eqx as npx
from noprop_eqx.models import SimpleCNN

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def dt():
    return npx.NoPropDT(10, SHAPE, num_blocks=2, backbone="simple", key=jr.key(0))


def _images(n=4, shape=SHAPE):
    return jnp.zeros((n, *shape))


def test_label_shape(dt):
    with pytest.raises(ValueError, match=r"expected labels of shape \(4,\), got \(4, 1\)"):
        npx.NoPropDT.loss_fn(dt, (_images(), jnp.zeros((4, 1), dtype=jnp.int32)), jr.key(0))


def test_label_dtype(dt):
    with pytest.raises(TypeError, match="expected integer class labels, got dtype float32"):
        npx.NoPropDT.loss_fn(dt, (_images(), jnp.zeros(4)), jr.key(0))


def test_labels_out_of_range(dt):
    with pytest.raises(Exception, match=r"expected labels in \[0, 10\)"):
        npx.NoPropDT.loss_fn(dt, (_images(), jnp.full((4,), 10, dtype=jnp.int32)), jr.key(0))


def test_image_shape_vs_model(dt):
    with pytest.raises(
        ValueError, match=r"expected images of shape \(batch, 1, 8, 8\), got \(4, 1, 28, 28\)"
    ):
        dt.predict(_images(shape=(1, 28, 28)))
    for cls in (npx.NoPropCT, npx.NoPropFM):
        model = cls(10, SHAPE, backbone="simple", key=jr.key(1))
        with pytest.raises(
            ValueError, match=r"expected images of shape \(batch, 1, 8, 8\), got \(4, 3, 8, 8\)"
        ):
            cls.loss_fn(model, (_images(shape=(3, 8, 8)), jnp.zeros(4, dtype=jnp.int32)), jr.key(0))


def test_image_dtype(dt):
    with pytest.raises(TypeError, match="expected floating-point images"):
        dt.predict(np.zeros((4, *SHAPE), dtype=np.uint8))


def test_num_classes_vs_embedding():
    with pytest.raises(ValueError, match="embedding has 5 classes but the model expects 10"):
        npx.NoPropDT(10, SHAPE, embedding=npx.OneHotEmbedding(5), backbone="simple", key=jr.key(0))


def test_backbone_that_does_not_fit():
    with pytest.raises(ValueError, match="backbone does not fit the model"):
        npx.NoPropCT(
            10, SHAPE, backbone=lambda k: SimpleCNN(7, 16, image_shape=SHAPE, key=k), key=jr.key(0)
        )


def test_blocks_that_do_not_match_num_blocks():
    three = npx.NoPropDT(10, SHAPE, num_blocks=3, backbone="simple", key=jr.key(0)).blocks
    with pytest.raises(
        ValueError, match=r"leading axis of size num_blocks=4, got leading sizes \[3\]"
    ):
        npx.NoPropDT(10, SHAPE, num_blocks=4, blocks=three, key=jr.key(0))


def test_unknown_options():
    with pytest.raises(
        ValueError, match=r"expected strategy to be one of \('loop', 'vmap', 'scan', 'auto'\)"
    ):
        npx.NoPropDT(10, SHAPE, strategy="magic", backbone="simple", key=jr.key(0))
    with pytest.raises(ValueError, match="expected backbone to be one of"):
        npx.NoPropFM(10, SHAPE, backbone="resnet9000", key=jr.key(0))
    with pytest.raises(ValueError, match="expected embedding to be one of"):
        npx.NoPropFM(10, SHAPE, embedding="two-hot", backbone="simple", key=jr.key(0))


def test_time_outside_unit_interval():
    model = npx.NoPropFM(10, SHAPE, backbone="simple", key=jr.key(0))
    with pytest.raises(ValueError, match=r"expected t in \[0, 1\], got 1.2"):
        model.vector_field(1.2, jnp.zeros((4, 10)), _images())


def test_prototype_embedding_label_shape():
    with pytest.raises(ValueError, match=r"expected labels of shape \(6,\), got \(6, 1\)"):
        npx.PrototypeEmbedding(np.zeros((6, 1, 8, 8)), np.zeros((6, 1), dtype=int), 2)
    with pytest.raises(ValueError, match="cannot build a prototype for class 1"):
        npx.PrototypeEmbedding(np.zeros((6, 1, 8, 8)), np.zeros(6, dtype=int), 2)
