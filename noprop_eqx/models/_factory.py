from collections.abc import Callable

from jaxtyping import PRNGKeyArray

from ._base import AbstractBackbone
from ._paper import PaperCTNet, PaperDTBlock
from ._resnet import ResNetWrapper
from ._simple import SimpleCNN

BackboneSpec = str | Callable[[PRNGKeyArray], AbstractBackbone]
BACKBONES = ("paper", "simple", "resnet18", "resnet34", "resnet50")


def make_backbone(
    spec: BackboneSpec,
    *,
    num_classes: int,
    embed_dim: int,
    image_shape: tuple[int, int, int],
    time_conditioned: bool,
    key: PRNGKeyArray,
) -> AbstractBackbone:
    """Builds a backbone from a name (see `BACKBONES`) or a `key -> AbstractBackbone` factory,
    and checks that it fits the variant (classes, embedding size, image shape, time input)."""
    if spec == "paper":
        if time_conditioned:
            net = PaperCTNet(num_classes, embed_dim, image_shape, key=key)
        else:
            net = PaperDTBlock(num_classes, embed_dim, image_shape, key=key)
    elif spec == "simple":
        net = SimpleCNN(
            num_classes,
            64 if time_conditioned else 0,
            embed_dim=embed_dim,
            image_shape=image_shape,
            key=key,
        )
    elif isinstance(spec, str) and spec in BACKBONES and spec.startswith("resnet"):
        net = ResNetWrapper(
            num_classes,
            int(spec.removeprefix("resnet")),
            64,
            64 if time_conditioned else 0,
            embed_dim=embed_dim,
            image_shape=image_shape,
            key=key,
        )
    elif callable(spec):
        net = spec(key)
    else:
        raise ValueError(
            f"expected backbone to be one of {BACKBONES} or a callable key -> AbstractBackbone, "
            f"got {spec!r}"
        )
    if not isinstance(net, AbstractBackbone):
        raise TypeError(
            f"expected the backbone to be an AbstractBackbone, got {type(net).__name__}"
        )
    expected = (num_classes, embed_dim, tuple(image_shape), time_conditioned)
    got = (net.num_classes, net.embed_dim, tuple(net.image_shape), net.time_conditioned)
    if expected != got:
        raise ValueError(
            "backbone does not fit the model: expected (num_classes, embed_dim, image_shape, "
            f"time_conditioned) = {expected}, got {got}"
        )
    return net
