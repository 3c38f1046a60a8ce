"""What NoProp-CT and NoProp-FM share: a read-out by an ODE from t = 0 (noise) to t = 1."""

import abc

import diffrax
import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Shaped

from ._checks import check_images
from ._embeddings import AbstractClassEmbedding
from ._solve import ODESolution, integrate
from .models import AbstractBackbone, encode_batched


class AbstractContinuousNoProp(eqx.Module):
    """A time-conditioned network `net` on a class embedding, read out by integrating
    dz/dt = f(t, z, x) from t = 0 to t = 1 with Diffrax. `NoPropCT` and `NoPropFM` are the two
    concrete ones: each gives `feature_vector_field` (its ODE) and `logits` (how z_1 becomes
    class scores); solving, the Diffrax-signature field and `predict` are shared."""

    net: eqx.AbstractVar[AbstractBackbone]
    embedding: eqx.AbstractVar[AbstractClassEmbedding]

    @property
    def num_classes(self) -> int:
        return self.embedding.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.net.image_shape

    @abc.abstractmethod
    def feature_vector_field(
        self, t: Float[ArrayLike, ""], z: Float[Array, "batch dim"], features: Array
    ) -> Float[Array, "batch dim"]:
        """dz/dt at time t, with args = `encode_batched(self.net, x)`: the image branch runs
        once per solve rather than once per function evaluation."""

    @abc.abstractmethod
    def logits(
        self, x: Shaped[ArrayLike, "batch c h w"], **solve_kwargs
    ) -> Float[Array, "batch classes"]:
        """Class scores from z_1 = `solve(x, **solve_kwargs).z1`."""

    def vector_field(
        self, t: Float[ArrayLike, ""], z: Float[Array, "batch dim"], x: Float[Array, "batch c h w"]
    ) -> Float[Array, "batch dim"]:
        """dz/dt in Diffrax's signature f(t, z, args), with args = the images. (`solve`
        integrates the same field on the encoded images, `feature_vector_field`.)"""
        return self.feature_vector_field(t, z, encode_batched(self.net, x))

    def solve(
        self,
        x: Shaped[ArrayLike, "batch c h w"],
        *,
        key: PRNGKeyArray | None = None,
        solver: diffrax.AbstractSolver | None = None,
        num_steps: int | None = None,
        dt0: float | None = None,
        stepsize_controller: diffrax.AbstractStepSizeController | None = None,
        max_steps: int = 4096,
    ) -> ODESolution:
        """Integrates the ODE from z_0 (N(0, I) with `key`, else 0) to z_1; see `integrate`."""
        x = check_images(x, self.image_shape)
        shape = (x.shape[0], self.embedding.dim)
        z0 = jnp.zeros(shape) if key is None else jr.normal(key, shape)
        return integrate(
            self.feature_vector_field,
            z0,
            encode_batched(self.net, x),
            solver=solver,
            num_steps=num_steps,
            dt0=dt0,
            stepsize_controller=stepsize_controller,
            max_steps=max_steps,
        )

    def predict(self, x: Shaped[ArrayLike, "batch c h w"], **solve_kwargs) -> Int[Array, " batch"]:
        """The class with the highest `logits(x, **solve_kwargs)`."""
        return jnp.argmax(self.logits(x, **solve_kwargs), axis=-1)
