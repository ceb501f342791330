"""Optimizer state of AdamW and Scaling ViT's Adafactor for ViT classifiers, side by side.

Counts, for each preset, the bytes of per-weight optimizer state that `ViTClassifier.compile`
gives with `optimizer="auto"` (AdamW: two float32 moments) and `optimizer="adafactor"`
(`ScalingViTAdafactor`: a bfloat16 momentum, float32 row and column factors of the second
moment, a full second moment only for vectors and thin matrices). The model is built once per
preset (random weights), the optimizers only from the variables' shapes.

    python benchmarks/optimizer_memory.py
    python benchmarks/optimizer_memory.py --presets vit_pico_patch4_32,vit_base_patch16_224
"""

import argparse
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DEFAULT_PRESETS = ("vit_pico_patch4_32", "vit_base_patch16_224", "vit_large_patch16_224")


def state_bytes(shapes, optimizer="adamw", min_dim_size_to_factor=32):
    """Bytes of per-weight optimizer state for variables of these shapes."""
    from keras_vtx.models import ScalingViTAdafactor

    total = 0
    factoring = ScalingViTAdafactor(min_dim_size_to_factor=min_dim_size_to_factor)
    for shape in shapes:
        size = math.prod(int(d) for d in shape)
        if optimizer == "adamw":
            total += 2 * 4 * size
            continue
        axes = factoring._factored_axes(tuple(shape))
        if axes is None:
            second = size
        else:
            small, large = axes
            second = size // shape[large] + size // shape[small]
        total += 2 * size + 4 * second
    return total


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--presets", default=",".join(DEFAULT_PRESETS))
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    from keras_vtx.models import ViTClassifier

    rows = []
    for name in args.presets.split(","):
        model = ViTClassifier.from_preset(name)
        shapes = [tuple(v.shape) for v in model.trainable_variables]
        parameters = sum(math.prod(shape) for shape in shapes)
        adamw, adafactor = state_bytes(shapes, "adamw"), state_bytes(shapes, "adafactor")
        rows.append({"preset": name, "parameters": parameters, "adamw_bytes": adamw,
                     "adafactor_bytes": adafactor, "ratio": adafactor / adamw})
        del model
    print("| preset | parameters | AdamW state | Adafactor state | Adafactor / AdamW |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['preset']} | {row['parameters']:,} | {row['adamw_bytes'] / 2**20:,.1f} MiB"
              f" | {row['adafactor_bytes'] / 2**20:,.1f} MiB | {row['ratio']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
