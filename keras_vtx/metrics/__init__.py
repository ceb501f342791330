"""Evaluation metrics: image-text retrieval recall@k and COCO box AP (pycocotools)."""

from keras_vtx.metrics.coco_evaluation import (
    COCOEvaluationCallback,
    detections_to_coco_results,
    evaluate_coco,
    write_coco_results,
)
from keras_vtx.metrics.retrieval import RetrievalRecall, retrieval_recall

__all__ = [
    "COCOEvaluationCallback",
    "RetrievalRecall",
    "detections_to_coco_results",
    "evaluate_coco",
    "retrieval_recall",
    "write_coco_results",
]
