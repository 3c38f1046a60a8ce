import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import noprop_eqx as npx
from noprop_eqx.models import SimpleCNN, SinusoidalTimeEmbedding

from .conftest import as_a_user

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def fm_field():
    """A fixed network vector field (NoPropFM on random images), the ODE the solvers integrate.
    Its time embedding's frequencies stop at 3 so the step sizes below are in the asymptotic
    regime (at 1000 a random network oscillates in t faster than a 1/64 step resolves)."""

    def backbone(key):
        net = SimpleCNN(4, 16, image_shape=SHAPE, key=key)
        return eqx.tree_at(lambda n: n.time_embedding, net, SinusoidalTimeEmbedding(16, 3.0))

    model = npx.NoPropFM(4, SHAPE, backbone=backbone, key=jr.key(0))
    x = jr.normal(jr.key(1), (3, *SHAPE))
    z0 = jr.normal(jr.key(2), (3, 4))
    return model, x, z0


def _error(model, x, z0, reference, **kwargs):
    z1 = npx.integrate(model.vector_field, z0, x, **kwargs).z1
    return float(jnp.max(jnp.abs(z1 - reference)))


def test_convergence_orders(fm_field):
    model, x, z0 = fm_field
    reference = npx.integrate(
        model.vector_field,
        z0,
        x,
        solver=diffrax.Tsit5(),
        stepsize_controller=diffrax.PIDController(rtol=1e-7, atol=1e-7),
    ).z1
    for solver, steps, order in [
        (diffrax.Euler(), (8, 16, 32, 64), 1),
        (diffrax.Heun(), (4, 8, 16, 32), 2),
    ]:
        errors = [_error(model, x, z0, reference, solver=solver, num_steps=n) for n in steps]
        slopes = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
        assert np.median(slopes) == pytest.approx(order, abs=0.35), (type(solver).__name__, errors)


def test_nfe_is_counted_exactly():
    calls = [0]

    def bump():
        calls[0] += 1

    def field(t, z, args):
        jax.debug.callback(bump)
        return -z * (1.0 + t)

    pid = diffrax.PIDController(rtol=1e-5, atol=1e-5)
    cases = [
        (diffrax.Euler(), dict(num_steps=10)),
        (diffrax.Heun(), dict(num_steps=10)),
        (diffrax.Tsit5(), dict(num_steps=7)),
        (diffrax.Tsit5(), dict(stepsize_controller=pid)),
        (diffrax.Dopri5(), dict(stepsize_controller=pid)),
        (diffrax.Heun(), dict(stepsize_controller=pid)),
    ]
    for solver, kwargs in cases:
        calls[0] = 0
        sol = npx.integrate(field, jnp.ones((3, 2)), solver=solver, **kwargs)
        jax.block_until_ready(sol.z1)
        jax.effects_barrier()
        assert int(sol.nfe) == calls[0], type(solver).__name__
        if "num_steps" in kwargs:
            assert int(sol.num_steps) == kwargs["num_steps"]
        # The exact solution z(1) = exp(-(t + t²/2)) z(0) at t = 1.
        assert float(sol.z1[0, 0]) == pytest.approx(np.exp(-1.5), abs=0.05)


def test_ct_and_fm_predict_with_each_solver(getkey):
    x = jr.normal(getkey(), (5, *SHAPE))
    for cls in (npx.NoPropCT, npx.NoPropFM):
        model = cls(3, SHAPE, backbone="simple", key=getkey())
        for kwargs in (
            dict(solver=diffrax.Euler(), num_steps=5),
            dict(solver=diffrax.Heun(), num_steps=5),
            dict(solver=diffrax.Tsit5(), stepsize_controller=diffrax.PIDController(1e-3, 1e-3)),
        ):
            sol = model.solve(x, **kwargs)
            assert sol.z1.shape == (5, 3) and bool(jnp.all(jnp.isfinite(sol.z1)))
            assert int(sol.nfe) >= 5
            predictions = model.predict(x, **kwargs)
            assert predictions.shape == (5,) and predictions.dtype == jnp.int32


def test_bad_solver_options(getkey):
    field = lambda t, z, args: -z
    z0 = jnp.ones((2, 2))
    with as_a_user(), pytest.raises(TypeError, match="expected a Diffrax solver, got str"):
        npx.integrate(field, z0, solver="rk4")  # the library's message, not jaxtyping's
    with pytest.raises(ValueError, match="needs a solver with an error estimate; Euler has none"):
        npx.integrate(
            field, z0, solver=diffrax.Euler(), stepsize_controller=diffrax.PIDController(1e-3, 1e-3)
        )
    with pytest.raises(ValueError, match="expected num_steps to be a positive int, got 0"):
        npx.integrate(field, z0, num_steps=0)
    with pytest.raises(ValueError, match="give num_steps or dt0, not both"):
        npx.integrate(field, z0, num_steps=4, dt0=0.25)
    with pytest.raises(TypeError, match="expected an explicit Diffrax solver"):
        npx.integrate(field, z0, solver=diffrax.ImplicitEuler())


def test_solve_on_encoded_images_equals_the_image_vector_field(fm_field):
    # `solve` encodes the images once and integrates `feature_vector_field`; the result must be
    # the ODE of `vector_field` on the images themselves.
    model, x, _ = fm_field
    ct = npx.NoPropCT(4, SHAPE, backbone="simple", key=jr.key(3))
    for m in (model, ct):
        z0 = jnp.zeros((x.shape[0], m.embedding.dim))
        expected = npx.integrate(m.vector_field, z0, x, num_steps=7).z1
        np.testing.assert_allclose(m.solve(x, num_steps=7).z1, expected, rtol=1e-5, atol=1e-5)


class _LinearFlow(npx.AbstractContinuousNoProp):
    """A user's own ODE variant on the shared base: dz/dt = (1 + t) c with a constant c, so
    z(1) = z(0) + 1.5 c exactly, and Heun (second order) integrates it without error."""

    net: npx.models.AbstractBackbone
    embedding: npx.AbstractClassEmbedding
    c: jax.Array

    def feature_vector_field(self, t, z, features):
        return jnp.broadcast_to((1.0 + t) * self.c, z.shape)

    def logits(self, x, **solve_kwargs):
        z1 = self.solve(x, **solve_kwargs).z1
        return -jnp.sum((z1[:, None, :] - self.embedding.matrix()[None]) ** 2, axis=-1)


def test_a_user_variant_on_the_shared_ode_base(getkey):
    fm = npx.NoPropFM(3, SHAPE, backbone="simple", key=getkey())
    assert isinstance(fm, npx.AbstractContinuousNoProp)
    assert isinstance(
        npx.NoPropCT(3, SHAPE, backbone="simple", key=getkey()), npx.AbstractContinuousNoProp
    )
    c = jnp.array([0.0, 2.0 / 1.5, 0.0])  # carries z_0 = 0 to the second one-hot embedding
    flow = _LinearFlow(fm.net, fm.embedding, c)
    x = jr.normal(getkey(), (4, *SHAPE))
    assert flow.num_classes == 3 and flow.image_shape == SHAPE
    sol = flow.solve(x, solver=diffrax.Heun(), num_steps=3)
    np.testing.assert_allclose(sol.z1, jnp.broadcast_to(1.5 * c, (4, 3)), atol=1e-6)
    assert int(sol.nfe) == 6
    np.testing.assert_array_equal(flow.predict(x), jnp.ones(4, jnp.int32))
    z0 = jr.normal(getkey(), (4, 3))
    np.testing.assert_allclose(
        npx.integrate(flow.vector_field, z0, x, num_steps=2).z1, z0 + 1.5 * c[None], atol=1e-6
    )
    with pytest.raises(TypeError):
        npx.AbstractContinuousNoProp()  # abstract: no feature_vector_field or logits
