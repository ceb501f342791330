"""Image GPT sizes as a table and the named presets built from it (configs, random weights).

The released weights load from a transformers directory or `hf://openai/imagegpt-small`
(`-medium`, `-large`) with `ImageGPT.from_preset`.
"""

import itertools

from keras_vtx.models.presets import register_preset

# name: (num_layers, hidden_dim, num_heads, parameters in the paper). Layers and
# widths from Chen et al. 2020, section 3.3; heads from openai/image-gpt's
# released configs (S, M, L). The paper gives no head count for iGPT-XL (never
# released): 16 as for iGPT-L is our choice, and does not change the count.
VARIANTS = {
    "small": (24, 512, 8, "76M"),
    "medium": (36, 1024, 8, "455M"),
    "large": (48, 1536, 16, "1.4B"),
    "xlarge": (60, 3072, 16, "6.8B"),
}
PALETTE_SIZE = 512  # the paper's 9-bit colour palette (k-means, k = 512)
IMAGE_SIZE = 32  # the released models' 32x32 inputs: 1024 tokens


def count_parameters(vocabulary_size, sequence_length, hidden_dim, num_layers, mlp_dim=None,
                     head=True):
    """Number of weights of an Image GPT, from its sizes (no model is built).

    Args:
        vocabulary_size: int, palette size + 1.
        sequence_length: int.
        hidden_dim: int.
        num_layers: int.
        mlp_dim: int or None (4 * hidden_dim).
        head: bool, count the output head over the palette.

    Returns:
        An int.

    Example:
    >>> count_parameters(513, 1024, 512, 24)
    76682240
    """
    d = hidden_dim
    m = 4 * d if mlp_dim is None else mlp_dim
    block = 2 * d + 4 * (d * d + d) + (d * m + m) + (m * d + d)  # 2 norms, q/k/v/o, MLP
    total = vocabulary_size * d + sequence_length * d + num_layers * block + d
    if head:
        total += d * (vocabulary_size - 1)
    return total


def _tiny_palette():
    # 16 fixed colours in transformers' [-1, 1] space: the RGB cube's corners and
    # their midpoints towards the centre, so test images quantise sensibly.
    corners = [list(c) for c in itertools.product((-1.0, 1.0), repeat=3)]
    return corners + [[v * 0.5 for v in c] for c in corners]


def _register_all():
    for size, (layers, width, heads, params) in VARIANTS.items():
        backbone = dict(
            vocabulary_size=PALETTE_SIZE + 1, sequence_length=IMAGE_SIZE * IMAGE_SIZE,
            hidden_dim=width, num_layers=layers, num_heads=heads,
        )
        config_only = " (config only: never released)" if size == "xlarge" else ""
        register_preset(
            f"igpt_{size}",
            "ImageGPT",
            {"backbone": backbone, "objective": "autoregressive"},
            description=(
                f"iGPT-{size[0].upper() if size != 'xlarge' else 'XL'}: {layers} layers, "
                f"width {width}, {params} parameters, 32x32 images, 512-colour palette; "
                f"random weights{config_only}."
            ),
            metadata={
                "parameters": count_parameters(PALETTE_SIZE + 1, IMAGE_SIZE ** 2, width, layers),
                "paper_parameters": params,
                "source": "Chen et al. 2020, Generative Pretraining from Pixels",
            },
        )
    # 16 colours: the shapes set's 8 named colours and its dark backgrounds need no
    # more, and every pixel id then carries shape rather than noise.
    pico = dict(vocabulary_size=17, sequence_length=16 * 16, hidden_dim=128, num_layers=4,
                num_heads=4)
    register_preset(
        "igpt_pico_shapes",
        "ImageGPT",
        {"backbone": pico, "objective": "autoregressive"},
        description=(
            "A 4-layer, 128-wide iGPT for 16x16 images and a 16-colour palette: the "
            "recipe's default on the embedded shapes set (trains on a CPU in minutes)."
        ),
        metadata={"parameters": count_parameters(17, 16 * 16, 128, 4)},
    )
    tiny = dict(vocabulary_size=17, sequence_length=64, hidden_dim=16, num_layers=2,
                num_heads=2)
    register_preset(
        "igpt_tiny_test",
        "ImageGPT",
        {"backbone": tiny, "objective": "autoregressive", "palette": _tiny_palette()},
        description="A 2-layer, 16-wide iGPT for 8x8 images and 16 colours, for tests.",
        metadata={"parameters": count_parameters(17, 64, 16, 2)},
    )


_register_all()
