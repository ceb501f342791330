"""DETR presets: the published configurations (Carion et al. 2020, table 1) and tiny ones."""

from keras_vtx.models.presets import register_preset

# The transformer of every published DETR (facebookresearch/detr `main.py` defaults):
# d_model 256, 8 heads, 6 + 6 layers, FFN 2048, dropout 0.1, 100 queries, and 91
# classes: COCO's category ids run up to 90, so id 0..90 (some unused) + "no object".
DETR_TRANSFORMER = dict(
    num_classes=91, num_queries=100, hidden_dim=256, num_heads=8, num_encoder_layers=6,
    num_decoder_layers=6, mlp_dim=2048, dropout=0.1, attention_dropout=0.1, aux_loss=True,
)
# Parameter counts of the published models (transformers' DetrForObjectDetection with a
# ResNetConfig backbone, every parameter including the frozen ones; see the model tests).
PARAMETER_COUNTS = {
    "detr_resnet50": 41_524_768,
    "detr_resnet50_dc5": 41_524_768,
    "detr_resnet101": 60_464_672,
    "detr_resnet101_dc5": 60_464_672,
}


def _register_all():
    for depth in (50, 101):
        for dc5 in (False, True):
            name = f"detr_resnet{depth}" + ("_dc5" if dc5 else "")
            register_preset(
                name,
                "DETR",
                {"backbone": {"depth": depth, "dilation": dc5, "frozen_stages": 1},
                 **DETR_TRANSFORMER},
                f"DETR with a ResNet-{depth}{' DC5 (stride 16)' if dc5 else ''} backbone, "
                "COCO's 91 classes.",
                metadata={"parameters": PARAMETER_COUNTS[name]},
            )
    # The recipe's default on the embedded shapes set (128 x 128 images, up to 4 objects):
    # trained from scratch, so no stage is frozen and batch norm is trainable; stride 16
    # (DC5) gives 8 x 8 tokens; DN-DETR's query denoising in training. Measured on this set
    # (benchmarks/detr_convergence.py, 6,000 steps of 16, docs/detr.md): held-out AP 0.13
    # for plain DETR, 0.49 with denoising, 0.57 with denoising and trainable batch norm.
    register_preset(
        "detr_pico_shapes",
        "DETR",
        {"backbone": {"stage_filters": (16, 32, 64, 128), "blocks_per_stage": (1, 1, 1, 1),
                      "stem_filters": 16, "dilation": True, "frozen_stages": -1,
                      "norm": "batch_norm"},
         "num_classes": 6, "num_queries": 10, "hidden_dim": 64, "num_heads": 4,
         "num_encoder_layers": 2, "num_decoder_layers": 2, "mlp_dim": 128, "dropout": 0.0,
         "attention_dropout": 0.0, "aux_loss": True, "denoising_groups": 5},
        "A small DETR (ResNet of 16-128 filters with batch norm, width 64, 2 + 2 layers, 10 "
        "queries, query denoising) trained from scratch by recipes/detr_detection.py on the "
        "shapes set.",
    )
    # For tests and docstrings: builds and runs in well under a second.
    register_preset(
        "detr_tiny_test",
        "DETR",
        {"backbone": {"stage_filters": (2, 4, 4, 8), "blocks_per_stage": (1, 1, 1, 1),
                      "stem_filters": 8, "frozen_stages": 1},
         "num_classes": 3, "num_queries": 5, "hidden_dim": 16, "num_heads": 2,
         "num_encoder_layers": 1, "num_decoder_layers": 2, "mlp_dim": 32, "dropout": 0.1,
         "attention_dropout": 0.1, "aux_loss": True},
        "A tiny random DETR (ResNet with 8-channel stem, width 16) for tests.",
    )


_register_all()
