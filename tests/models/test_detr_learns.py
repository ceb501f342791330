"""DETR's training path learns: a tiny DETR memorises a few images to COCO AP >= 0.9.

Parity tests (the loss, the model and the matcher against references) do not catch a training
path that has stopped learning (a detached gradient, a wrong target order, a mask that hides the
image). This trains a small DETR with `fit()` on eight fixed 64 x 64 shapes images, with and
without query denoising, and measures pycocotools' AP on them. On 2 CPU cores each run takes
20-50 s (the compile of TensorFlow's XLA step most of it).
"""

import numpy as np
import pytest

from keras_vtx.data.shapes import generate_shapes, shapes_to_coco
from keras_vtx.metrics.coco_evaluation import evaluate_coco
from keras_vtx.models import DETR, ResNetBackbone
from keras_vtx.models.detr import post_process_detections

IMAGES, SIZE = 8, 64
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225]) * 255


def _data():
    data = generate_shapes(IMAGES, image_size=SIZE, seed=3, min_shapes=1, max_shapes=2,
                           size_range=(0.3, 0.6))
    x = {"images": ((data["images"] - IMAGENET_MEAN) / IMAGENET_STD).astype("float32")}
    y = {"boxes": data["boxes"], "labels": data["box_labels"]}
    return data, x, y


@pytest.mark.slow
@pytest.mark.parametrize("denoising_groups", [0, 3])
def test_a_tiny_detr_memorises_a_few_images(denoising_groups):
    data, x, y = _data()
    backbone = ResNetBackbone(stage_filters=(8, 16, 16, 32), blocks_per_stage=(1, 1, 1, 1),
                              stem_filters=8, dilation=True, frozen_stages=-1)
    model = DETR(backbone, num_classes=6, num_queries=4, hidden_dim=32, num_heads=2,
                 num_encoder_layers=1, num_decoder_layers=2, mlp_dim=64, dropout=0.0,
                 attention_dropout=0.0, denoising_groups=denoising_groups)
    steps = 500
    model.compile(learning_rate=1e-3, backbone_learning_rate=1e-3, lr_drop_steps=350)
    history = model.fit(x, y, batch_size=4, epochs=steps * 4 // IMAGES, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    if denoising_groups:
        assert history.history["denoising_loss"][-1] < history.history["denoising_loss"][0]
    detections = post_process_detections(model.predict(x, verbose=0), [[SIZE, SIZE]] * IMAGES)
    ground_truth = shapes_to_coco(data, [f"{i}.png" for i in range(IMAGES)])
    metrics = evaluate_coco(detections, ground_truth, image_ids=list(range(1, IMAGES + 1)),
                            category_ids=list(range(1, 7)))
    assert metrics["AP"] >= 0.9, metrics
