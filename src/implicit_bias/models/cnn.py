"""Cohen et al.'s ``convnet`` (2021, arXiv 2103.00065, the CNN of their experiments).

Per entry c of ``channels``: a 3×3 convolution with padding 1 to c channels,
the activation φ, 2×2 pooling (``max`` or ``avg``); then a linear head from
the flattened features to the K outputs. Biases on everywhere. PyTorch's own
initialisation (drawn per run seed by the generic backend) times
``init_scale``; ``parametrization`` does not apply (the module's layers are
plain ``nn.Conv2d``/``nn.Linear``).
"""

from __future__ import annotations

from torch import nn


def activation_module(name: str, leak: float = 0.1) -> nn.Module:
    """φ as an ``nn.Module`` (the names of ``model.activation``)."""
    table = {
        "linear": nn.Identity,
        "relu": nn.ReLU,
        "tanh": nn.Tanh,
        "elu": nn.ELU,
        "gelu": nn.GELU,
        "softplus": nn.Softplus,
    }
    if name == "leaky_relu":
        return nn.LeakyReLU(leak)
    if name not in table:
        raise ValueError(f"model.activation: {name} is not offered for kind cnn")
    return table[name]()


def convnet(
    image_shape: tuple[int, int, int],
    outputs: int,
    channels: list[int],
    activation: str = "relu",
    pool: str = "max",
    leak: float = 0.1,
) -> nn.Sequential:
    """The convnet for images ``(C, H, W)`` with ``outputs`` outputs.

    Raises:
        ValueError: the images are too small for that many 2×2 poolings.
    """
    c_in, h, w = image_shape
    layers: list[nn.Module] = []
    for c in channels:
        if h < 2 or w < 2:
            raise ValueError(
                f"model.channels: {len(channels)} poolings halve {image_shape[1:]} images "
                "below 1×1; use fewer entries"
            )
        layers += [
            nn.Conv2d(c_in, c, kernel_size=3, padding=1),
            activation_module(activation, leak),
            nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2),
        ]
        c_in, h, w = c, h // 2, w // 2
    layers += [nn.Flatten(), nn.Linear(c_in * h * w, outputs)]
    return nn.Sequential(*layers)


def feature_count(image_shape: tuple[int, int, int], channels: list[int]) -> int:
    """Activations one sample holds in the convnet's forward pass (for memory estimates)."""
    _, h, w = image_shape
    total = 0
    for c in channels:
        total += 2 * c * h * w  # convolution output and activation
        h, w = h // 2, w // 2
        total += c * h * w  # pooled
    return total
