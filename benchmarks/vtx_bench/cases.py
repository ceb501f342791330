"""The benchmark configurations: one `Case` per model, mode and size.

Published sizes ("full") are the configurations the issue names: ViT-Ti/S/B with 16-pixel
patches at 224 (training and inference), CLIP ViT-B/32 (training pairs/s with the contrastive
loss), DETR-R50 at 800 x 1066 (a training step with the matcher inside) and iGPT-S at 32 x 32
(training and cached sampling). "tiny" keeps every case's structure with sizes a CPU runs in
seconds, for the smoke test. "host" keeps each published model's depth, head count, query
count and text length (what the host dispatches per step) with widths, images and batches so
small that the device's work is negligible: a step's time is then the host's (Python)
overhead per step, the floor under an eagerly run PyTorch step however fast the GPU.
"""

import dataclasses

import numpy as np

FAMILIES = ("vit", "clip", "detr", "igpt")
PRECISIONS = ("bfloat16", "float32")
SIZES = ("full", "tiny", "host")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str           # e.g. "vit_b16"
    family: str         # one of FAMILIES
    mode: str           # "train", "infer" or "sample"
    preset: str         # the keras_vtx preset
    overrides: tuple    # ((key, value), ...) applied to the preset's config
    batch: int
    unit: str           # what the throughput counts: "images", "pairs" or "pixels"
    label: str          # the published name, e.g. "ViT-B/16 @224"
    size: str = "full"  # one of SIZES

    @property
    def key(self):
        return f"{self.name}_{self.mode}"

    def config_overrides(self):
        return dict(self.overrides)


_VIT = {"vit_ti16": ("vit_tiny_patch16_224", "ViT-Ti/16 @224"),
        "vit_s16": ("vit_small_patch16_224", "ViT-S/16 @224"),
        "vit_b16": ("vit_base_patch16_224", "ViT-B/16 @224")}
# Tiny stand-ins keep each ViT distinct (widths 32/48/64) at 32 x 32 with 8-pixel patches.
_VIT_TINY = {"vit_ti16": 32, "vit_s16": 48, "vit_b16": 64}


def _vit_tiny(width):
    return (("backbone", dict(image_size=32, patch_size=8, num_layers=2, hidden_dim=width,
                              num_heads=2, mlp_dim=2 * width)), ("num_classes", 10))


CLIP_TINY = (("image_encoder", dict(image_size=32, patch_size=8, num_layers=2, hidden_dim=32,
                                    num_heads=2, mlp_dim=64)),
             ("text_encoder", dict(vocabulary_size=64, context_length=8, num_layers=2,
                                   hidden_dim=32, num_heads=2, mlp_dim=64, end_token_id=63)),
             ("projection_dim", 16))
DETR_TINY = (("backbone", dict(stage_filters=[2, 4, 4, 8], blocks_per_stage=[1, 1, 1, 1],
                               stem_filters=8, frozen_stages=1)),
             ("num_classes", 3), ("num_queries", 5), ("hidden_dim", 16), ("num_heads", 2),
             ("num_encoder_layers", 1), ("num_decoder_layers", 2), ("mlp_dim", 32))
IGPT_TINY = (("backbone", dict(vocabulary_size=17, sequence_length=16, hidden_dim=16,
                               num_layers=2, num_heads=2)),)
# DETR's input side: 800 x 1066 is a 4:3 COCO image after the shorter side is resized to 800
# (the longest-side cap is 1333); the tiny run keeps the aspect ratio.
DETR_IMAGE = {"full": (800, 1066), "tiny": (48, 64), "host": (48, 64)}
DETR_MAX_BOXES = {"full": 20, "tiny": 4, "host": 4}


# "host": the published depth and heads, 8 channels per head, 4 patches per image.
_VIT_HEADS = {"vit_ti16": 3, "vit_s16": 6, "vit_b16": 12}


def _vit_host(heads):
    return (("backbone", dict(image_size=32, patch_size=16, num_layers=12, hidden_dim=8 * heads,
                              num_heads=heads, mlp_dim=32 * heads)), ("num_classes", 10))


CLIP_HOST = (("image_encoder", dict(image_size=64, patch_size=32, num_layers=12, hidden_dim=96,
                                    num_heads=12, mlp_dim=384)),
             ("text_encoder", dict(vocabulary_size=1000, context_length=77, num_layers=12,
                                   hidden_dim=64, num_heads=8, mlp_dim=256, end_token_id=999)),
             ("projection_dim", 16))
DETR_HOST = (("backbone", dict(stage_filters=[2, 4, 4, 8], blocks_per_stage=[3, 4, 6, 3],
                               stem_filters=8, frozen_stages=1)),
             ("hidden_dim", 64), ("mlp_dim", 128))
IGPT_HOST = (("backbone", dict(sequence_length=64, hidden_dim=64, num_layers=24,
                               num_heads=8)),)
_OVERRIDES = {"tiny": dict(clip=CLIP_TINY, detr=DETR_TINY, igpt=IGPT_TINY),
              "host": dict(clip=CLIP_HOST, detr=DETR_HOST, igpt=IGPT_HOST)}
# Batch per size: ViT, CLIP, DETR, iGPT training, iGPT sampling.
_BATCH = {"full": (256, 256, 4, 32, 8), "tiny": (4, 4, 2, 4, 2), "host": (2, 2, 2, 2, 2)}


def _vit_overrides(name, size):
    if size == "tiny":
        return _vit_tiny(_VIT_TINY[name])
    return _vit_host(_VIT_HEADS[name]) if size == "host" else ()


def all_cases(size="full"):
    """Every case at `size` ("full": published configurations, "tiny": smoke sizes,
    "host": published depths with negligible device work)."""
    if size not in SIZES:
        raise ValueError(f"`size` must be one of {SIZES}; received {size!r}.")
    small = _OVERRIDES.get(size, {})
    vit, clip, detr, igpt_train, igpt_sample = _BATCH[size]
    cases = []
    for name, (preset, label) in _VIT.items():
        for mode in ("train", "infer"):
            cases.append(Case(name, "vit", mode, preset, _vit_overrides(name, size), vit,
                              "images", label, size))
    cases.append(Case("clip_b32", "clip", "train", "clip_vit_base_patch32",
                      small.get("clip", ()), clip, "pairs", "CLIP ViT-B/32", size))
    cases.append(Case("detr_r50", "detr", "train", "detr_resnet50", small.get("detr", ()), detr,
                      "images", "DETR-R50 @800x1066", size))
    igpt = small.get("igpt", ())
    cases.append(Case("igpt_s", "igpt", "train", "igpt_small", igpt, igpt_train, "images",
                      "iGPT-S @32x32", size))
    cases.append(Case("igpt_s", "igpt", "sample", "igpt_small", igpt, igpt_sample, "pixels",
                      "iGPT-S @32x32", size))
    return cases


def select(cases, families=None, names=None, modes=None):
    """The cases whose family, name (or key) and mode are in the given lists (None: all)."""
    out = []
    if names:  # in the order given
        cases = sorted(cases, key=lambda c: min(
            [i for i, n in enumerate(names) if n in (c.name, c.key)] or [len(names)]))
    for case in cases:
        if families and case.family not in families:
            continue
        if names and case.name not in names and case.key not in names:
            continue
        if modes and case.mode not in modes:
            continue
        out.append(case)
    return out


def resolved_config(case):
    """The preset's model config with the case's overrides (nested dicts merged)."""
    from keras_vtx.models.presets import get_preset

    config = dict(get_preset(case.preset)["config"])
    for key, value in case.overrides:
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            # A tiny override replaces the published sizes but keeps other settings
            # (CLIP's quick_gelu, DETR's frozen stages); DETR's backbone depth gives way
            # to explicit stage sizes.
            base = {k: v for k, v in config[key].items() if k != "depth"}
            config[key] = {**base, **value}
        else:
            config[key] = value
    return config


def make_inputs(case, config, seed=0):
    """NumPy inputs `(x, y)` for the case (y is None where the model needs no labels)."""
    rng = np.random.default_rng(seed)
    b = case.batch
    if case.family == "vit":
        side = config["backbone"]["image_size"]
        x = rng.uniform(0, 255, (b, side, side, 3)).astype("float32")
        y = rng.integers(0, config["num_classes"], b).astype("int32")
        return x, y
    if case.family == "clip":
        side = config["image_encoder"]["image_size"]
        text = config["text_encoder"]
        length, end = text["context_length"], text["end_token_id"]
        images = rng.uniform(0, 255, (b, side, side, 3)).astype("float32")
        # Random tokens, then the end token, then padding; the end token's position varies.
        ids = rng.integers(1, end - 1, (b, length)).astype("int32")
        ends = rng.integers(length // 2, length, b)
        for i, e in enumerate(ends):
            ids[i, e] = end
            ids[i, e + 1:] = 0
        return {"images": images, "token_ids": ids}, None
    if case.family == "detr":
        size = case.size
        h, w = DETR_IMAGE[size]
        images = rng.standard_normal((b, h, w, 3)).astype("float32")
        mask = np.ones((b, h, w), "int32")
        m = DETR_MAX_BOXES[size]
        boxes = np.zeros((b, m, 4), "float32")
        labels = np.full((b, m), -1, "int32")
        for i in range(b):
            n = int(rng.integers(1, m + 1))
            boxes[i, :n, :2] = rng.uniform(0.2, 0.8, (n, 2))
            boxes[i, :n, 2:] = rng.uniform(0.05, 0.3, (n, 2))
            labels[i, :n] = rng.integers(0, config["num_classes"], n)
        return {"images": images, "pixel_mask": mask}, {"boxes": boxes, "labels": labels}
    if case.family == "igpt":
        backbone = config["backbone"]
        ids = rng.integers(0, backbone["vocabulary_size"] - 1,
                           (b, backbone["sequence_length"])).astype("int32")
        return ids, np.zeros((b,), "int32")
    raise ValueError(f"Unknown family {case.family!r}.")


def items_per_step(case, config):
    """Images, pairs or generated pixels per timed call."""
    if case.mode == "sample":
        return case.batch * config["backbone"]["sequence_length"]
    return case.batch
