import contextlib
import copy
import io
import json
import sys

import keras
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from keras_vtx.metrics.coco_evaluation import (
    STAT_NAMES,
    COCOEvaluationCallback,
    detections_to_coco_results,
    evaluate_coco,
    write_coco_results,
)


def _ground_truth(num_images=6, seed=0):
    """A random COCO ground truth: boxes of several sizes and 3 categories (ids 2, 5, 9)."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 320,
                       "height": 240})
        for _ in range(rng.integers(0, 5)):
            w, h = rng.uniform(8, 150, 2)
            x, y = rng.uniform(0, 320 - w), rng.uniform(0, 240 - h)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(rng.choice([2, 5, 9])),
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    annotations[0]["iscrowd"] = 1
    categories = [{"id": i, "name": n} for i, n in ((2, "a"), (5, "b"), (9, "c"))]
    return {"images": images, "annotations": annotations, "categories": categories}


def _noisy_results(gt, seed=1):
    rng = np.random.default_rng(seed)
    results = []
    for a in gt["annotations"]:
        if rng.uniform() < 0.8:
            x, y, w, h = np.asarray(a["bbox"]) + rng.normal(0, 6, 4)
            results.append({"image_id": a["image_id"], "category_id": a["category_id"],
                            "bbox": [float(x), float(y), float(abs(w)), float(abs(h))],
                            "score": float(rng.uniform())})
    for _ in range(10):  # false positives
        results.append({"image_id": int(rng.integers(1, 7)), "category_id": 5,
                        "bbox": [float(v) for v in rng.uniform(0, 100, 4)],
                        "score": float(rng.uniform())})
    return results


@pytest.mark.backend_independent
def test_perfect_predictions_give_ap_one():
    gt = _ground_truth()
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                "score": 1.0} for a in gt["annotations"] if not a["iscrowd"]]
    metrics = evaluate_coco(results, gt)
    assert set(metrics) == set(STAT_NAMES)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AR100"] == pytest.approx(1.0)


@pytest.mark.backend_independent
def test_equals_pycocotools_run_directly(tmp_path, capsys):
    gt = _ground_truth(seed=3)
    results = _noisy_results(gt)
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    metrics = evaluate_coco(copy.deepcopy(results), str(gt_path))
    assert capsys.readouterr().out == ""  # quiet by default
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    np.testing.assert_allclose([metrics[k] for k in STAT_NAMES], evaluator.stats, rtol=1e-12)
    assert 0.2 < metrics["AP"] < 0.95
    evaluate_coco(results, gt, verbose=True)
    assert "Average Precision" in capsys.readouterr().out


@pytest.mark.backend_independent
def test_per_image_detections_with_label_mapping_equal_flat_results():
    gt = _ground_truth(seed=4)
    results = _noisy_results(gt, seed=2)
    category_ids = (2, 5, 9)
    detections = []
    for image_id in range(1, 7):
        mine = [r for r in results if r["image_id"] == image_id]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in mine)])
        detections.append({"scores": np.array([r["score"] for r in mine]),
                           "labels": np.array([category_ids.index(r["category_id"])
                                               for r in mine]),
                           "boxes": boxes.reshape(-1, 4)})
    converted = detections_to_coco_results(detections, range(1, 7), category_ids)
    assert len(converted) == len(results)
    per_image = evaluate_coco(detections, gt, image_ids=list(range(1, 7)),
                              category_ids=category_ids)
    flat = evaluate_coco(results, gt)
    for name in STAT_NAMES:
        assert per_image[name] == pytest.approx(flat[name], abs=1e-9)
    with pytest.raises(ValueError, match="image_ids"):
        evaluate_coco(detections, gt)


@pytest.mark.backend_independent
def test_results_json_round_trip(tmp_path):
    gt = _ground_truth(seed=5)
    results = _noisy_results(gt, seed=5)
    path = tmp_path / "out" / "results.json"
    written = write_coco_results(results, str(path))
    loaded = json.loads(path.read_text())
    assert loaded == written == results
    assert evaluate_coco(str(path), gt) == evaluate_coco(results, gt)


@pytest.mark.backend_independent
def test_empty_predictions_and_unknown_images():
    gt = _ground_truth(seed=6)
    metrics = evaluate_coco([], gt)
    assert metrics["AP"] == 0.0 and metrics["AR100"] == 0.0
    bad = [{"image_id": 99, "category_id": 2, "bbox": [0, 0, 5, 5], "score": 0.5}]
    with pytest.raises(ValueError, match="99"):
        evaluate_coco(bad, gt)
    with pytest.raises(ValueError, match="lacks"):
        evaluate_coco([{"image_id": 1, "bbox": [0, 0, 1, 1]}], gt)


class FixedDetector(keras.Model):
    """Returns the same DETR-style outputs for every image: the ground truth of image 1."""

    def __init__(self, boxes, labels, num_classes):
        super().__init__()
        logits = np.full((1, len(labels), num_classes + 1), -10.0, "float32")
        logits[0, np.arange(len(labels)), labels] = 10.0
        self.fixed_logits = logits
        self.fixed_boxes = np.asarray(boxes, "float32")[None]

    def call(self, x):
        batch = keras.ops.shape(x["images"])[0]
        logits = keras.ops.convert_to_tensor(self.fixed_logits)
        boxes = keras.ops.convert_to_tensor(self.fixed_boxes)
        return {"logits": keras.ops.tile(logits, (batch, 1, 1)),
                "boxes": keras.ops.tile(boxes, (batch, 1, 1))}


def test_callback_logs_ap_for_later_callbacks(tmp_path):
    gt = {"images": [{"id": 1, "width": 200, "height": 100},
                     {"id": 2, "width": 200, "height": 100}],
          "categories": [{"id": 4, "name": "x"}, {"id": 8, "name": "y"}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 4, "bbox": [20, 10, 60, 40],
               "area": 2400, "iscrowd": 0},
              {"id": 2, "image_id": 1, "category_id": 8, "bbox": [100, 50, 80, 40],
               "area": 3200, "iscrowd": 0},
              {"id": 3, "image_id": 2, "category_id": 8, "bbox": [0, 0, 50, 50],
               "area": 2500, "iscrowd": 0}]}
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    # Normalised cxcywh of image 1's boxes: right for image 1, wrong for image 2.
    boxes = [[50 / 200, 30 / 100, 60 / 200, 40 / 100], [140 / 200, 70 / 100, 80 / 200, 0.4]]
    model = FixedDetector(boxes, [0, 1], num_classes=2)
    batches = [({"images": np.zeros((1, 16, 32, 3), "float32")},
                {"image_id": np.array([i]), "orig_size": np.array([[100, 200]])})
               for i in (1, 2)]
    results_path = tmp_path / "results.json"
    callback = COCOEvaluationCallback(batches, str(gt_path), every_n_epochs=2,
                                      category_ids=(4, 8), results_path=str(results_path))
    seen = []  # what a callback listed after it (ModelCheckpoint, TensorBoard) receives
    later = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(logs))
    callbacks = keras.callbacks.CallbackList([callback, later], model=model)
    callbacks.on_train_begin()
    callbacks.on_epoch_end(0, {"loss": 1.0})
    assert "val_AP" not in seen[0]  # every second epoch only
    callbacks.on_epoch_end(1, {"loss": 1.0})
    logs = seen[1]
    assert logs["loss"] == 1.0 and {"val_" + k for k in STAT_NAMES} <= set(logs)
    # Image 1 perfect, image 2's box missed with a false positive: AP50 = 0.5 for "y"
    # averaged with 1.0 for "x".
    expected = evaluate_coco(json.loads(results_path.read_text()), gt,
                             eval_image_ids=[1, 2])
    assert logs["val_AP"] == pytest.approx(expected["AP"])
    assert 0.5 < logs["val_AP50"] < 1.0 and logs["val_APl"] == expected["APl"]
    assert callback.history[0]["epoch"] == 1
    # Evaluated on image 1 only (max_batches=1): perfect.
    only_first = COCOEvaluationCallback(batches, gt, category_ids=(4, 8), max_batches=1)
    only_first.set_model(model)
    assert only_first.evaluate()["AP"] == pytest.approx(1.0)


@pytest.mark.backend_independent
def test_callback_rejects_bad_arguments():
    with pytest.raises(ValueError, match="every_n_epochs"):
        COCOEvaluationCallback([], {}, every_n_epochs=0)


@pytest.mark.backend_independent
def test_missing_pycocotools_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    monkeypatch.setitem(sys.modules, "pycocotools.cocoeval", None)
    with pytest.raises(ImportError, match="pip install pycocotools"):
        evaluate_coco([], _ground_truth())
