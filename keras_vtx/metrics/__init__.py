"""Evaluation metrics: image-text retrieval recall@k."""

from keras_vtx.metrics.retrieval import RetrievalRecall, retrieval_recall

__all__ = ["RetrievalRecall", "retrieval_recall"]
