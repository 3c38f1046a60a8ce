import abc

import equinox as eqx
from jaxtyping import Array, Float, PRNGKeyArray


class AbstractBackbone(eqx.Module):
    """A network seeing one example: (z, x) for a DT block, (z, x, t) for the CT/FM network.

    Returns logits over the m classes. Dropout runs when `key` is given (training) and is off
    when `key` is None (evaluation).
    """

    num_classes: eqx.AbstractVar[int]
    embed_dim: eqx.AbstractVar[int]
    image_shape: eqx.AbstractVar[tuple[int, int, int]]
    time_conditioned: eqx.AbstractVar[bool]

    @abc.abstractmethod
    def __call__(
        self,
        z: Float[Array, " embed"],
        x: Float[Array, "c h w"],
        t: Float[Array, ""] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " classes"]:
        """Logits over the classes."""
