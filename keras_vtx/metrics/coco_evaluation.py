"""COCO box AP through pycocotools: a function, a results-JSON writer and a Keras callback.

The numbers are pycocotools' own (`COCOeval` with `iouType="bbox"`): this
module only converts predictions to COCO's results format and reads the
summary. pycocotools (a keras_vtx dependency) is imported when needed, and its
printing is silenced unless `verbose=True`. Nothing here needs TensorFlow.
"""

import contextlib
import io
import json
import os

import keras
import numpy as np

# The order of COCOeval.stats (pycocotools/cocoeval.py, `summarize`).
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _import_pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as error:
        raise ImportError(
            "COCO evaluation needs the `pycocotools` package: pip install pycocotools"
        ) from error
    return COCO, COCOeval


def _is_per_image(predictions):
    return bool(predictions) and isinstance(predictions[0], dict) and "boxes" in predictions[0]


def detections_to_coco_results(detections, image_ids, category_ids=None):
    """Per-image detections (scores, labels, absolute xyxy boxes) -> a COCO results list.

    Args:
        detections: list of dicts `{"scores": (n,), "labels": (n,), "boxes":
            (n, 4)}`, boxes absolute `(x_min, y_min, x_max, y_max)` in the
            original image (what `post_process_detections` returns).
        image_ids: the COCO image id of each dict.
        category_ids: sequence mapping a label to its COCO category id
            (`DetectionInfo.category_ids`); None: labels are category ids.

    Returns:
        A list of `{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`.

    Example:
    >>> detections = [{"scores": np.array([0.9]), "labels": np.array([0]),
    ...                "boxes": np.array([[10.0, 20.0, 30.0, 60.0]])}]
    >>> detections_to_coco_results(detections, [42], category_ids=[5])
    [{'image_id': 42, 'category_id': 5, 'bbox': [10.0, 20.0, 20.0, 40.0], 'score': 0.9}]
    """
    image_ids = list(np.asarray(image_ids).reshape(-1))
    if len(image_ids) != len(detections):
        raise ValueError(f"`image_ids` must give one id per detections dict: received "
                         f"{len(image_ids)} ids for {len(detections)} dicts.")
    results = []
    for image_id, detection in zip(image_ids, detections):
        scores = np.asarray(keras.ops.convert_to_numpy(detection["scores"]), "float64")
        labels = np.asarray(keras.ops.convert_to_numpy(detection["labels"])).astype("int64")
        boxes = np.asarray(keras.ops.convert_to_numpy(detection["boxes"]), "float64")
        boxes = boxes.reshape(-1, 4)
        for score, label, (x0, y0, x1, y1) in zip(scores.reshape(-1), labels.reshape(-1), boxes):
            if category_ids is not None and not 0 <= label < len(category_ids):
                raise ValueError(f"A label {label} has no entry in `category_ids` "
                                 f"(length {len(category_ids)}).")
            category = int(category_ids[label]) if category_ids is not None else int(label)
            results.append({"image_id": int(image_id), "category_id": category,
                            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                            "score": float(score)})
    return results


def _to_results(predictions, image_ids, category_ids):
    predictions = list(predictions)
    if _is_per_image(predictions):
        if image_ids is None:
            raise ValueError("Per-image predictions ({'scores', 'labels', 'boxes'}) need "
                             "`image_ids`, one per image.")
        return detections_to_coco_results(predictions, image_ids, category_ids)
    for result in predictions[:1]:
        missing = {"image_id", "category_id", "bbox", "score"} - set(result)
        if missing:
            raise ValueError(f"`predictions` must be COCO results {{'image_id', 'category_id', "
                             f"'bbox', 'score'}} or per-image dicts {{'scores', 'labels', "
                             f"'boxes'}}; the first lacks {sorted(missing)}.")
    return predictions


def write_coco_results(predictions, path, image_ids=None, category_ids=None):
    """Writes predictions as a COCO results JSON (a list of `{image_id, category_id, bbox, score}`).

    Args:
        predictions: COCO results dicts, or per-image detection dicts (then
            `image_ids` and optionally `category_ids` as in
            `detections_to_coco_results`).
        path: the JSON file to write.
        image_ids: the image id of each per-image dict.
        category_ids: label -> category id, for per-image dicts.

    Returns:
        The list of results written.

    Example:
    >>> import json, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "results.json")
    >>> results = [{"image_id": 1, "category_id": 2, "bbox": [0, 0, 5, 5], "score": 0.5}]
    >>> json.load(open(path)) if write_coco_results(results, path) else None
    [{'image_id': 1, 'category_id': 2, 'bbox': [0, 0, 5, 5], 'score': 0.5}]
    """
    results = _to_results(predictions, image_ids, category_ids)
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f)
    return results


def _ground_truth(ground_truth, COCO):
    if isinstance(ground_truth, COCO):
        return ground_truth
    coco = COCO()
    if isinstance(ground_truth, dict):
        coco.dataset = ground_truth
    else:
        with open(ground_truth, encoding="utf-8") as f:
            coco.dataset = json.load(f)
    coco.createIndex()
    return coco


def evaluate_coco(predictions, ground_truth, image_ids=None, category_ids=None,
                  eval_image_ids=None, verbose=False):
    """COCO box AP and AR of predictions against a COCO ground truth, by pycocotools.

    Args:
        predictions: a list of COCO results `{"image_id", "category_id",
            "bbox": [x, y, w, h] absolute, "score"}` (or the path of such a
            results JSON, as `write_coco_results` writes), or a list of per-image
            dicts `{"scores", "labels", "boxes"}` with absolute xyxy boxes in
            the original image (from `post_process_detections`, then pass
            `image_ids` and, for contiguous labels, `category_ids`). May be empty.
        ground_truth: the instances JSON path, its loaded dict, or a
            `pycocotools.coco.COCO`.
        image_ids: the image id of each per-image dict.
        category_ids: label -> COCO category id (`DetectionInfo.category_ids`).
        eval_image_ids: the images to evaluate on; default: the `image_ids` of
            per-image predictions, else every ground-truth image.
        verbose: bool, print pycocotools' summary table.

    Returns:
        A dict of floats: `AP` (IoU 0.50:0.95), `AP50`, `AP75`, `APs`, `APm`,
        `APl`, `AR1`, `AR10`, `AR100`, `ARs`, `ARm`, `ARl` (pycocotools gives
        -1 where no ground truth falls in a size range).

    Example:
    >>> ground_truth = {
    ...     "images": [{"id": 1, "width": 100, "height": 100}],
    ...     "categories": [{"id": 1, "name": "square"}],
    ...     "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
    ...                      "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0}]}
    >>> results = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9}]
    >>> round(evaluate_coco(results, ground_truth)["AP"], 3)
    1.0
    """
    COCO, COCOeval = _import_pycocotools()
    if isinstance(predictions, (str, os.PathLike)):
        with open(predictions, encoding="utf-8") as f:
            predictions = json.load(f)
    predictions = list(predictions)
    # Copies: pycocotools' loadRes adds keys to the dicts it is given.
    results = [dict(r) for r in _to_results(predictions, image_ids, category_ids)]
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        coco_gt = _ground_truth(ground_truth, COCO)
        unknown = {r["image_id"] for r in results} - set(coco_gt.getImgIds())
        if unknown:
            raise ValueError(f"`predictions` name image ids that are not in `ground_truth`: "
                             f"{sorted(unknown)[:5]}.")
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:
            # pycocotools' loadRes fails on an empty list: an empty result set instead.
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(coco_gt.dataset.get("images", [])),
                               "categories": list(coco_gt.dataset.get("categories", [])),
                               "annotations": []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if eval_image_ids is None and _is_per_image(predictions):
            eval_image_ids = image_ids
        if eval_image_ids is not None:
            evaluator.params.imgIds = sorted({int(i) for i in np.asarray(eval_image_ids)
                                              .reshape(-1)})
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats)}


def _as_numpy_batches(dataset):
    # A tf.data.Dataset is read through its NumPy iterator (no TensorFlow import here).
    if hasattr(dataset, "as_numpy_iterator"):
        return dataset.as_numpy_iterator()
    return iter(dataset)


class COCOEvaluationCallback(keras.callbacks.Callback):
    """Evaluates COCO box AP on a dataset every few epochs and adds it to the logs.

    At the end of every `every_n_epochs`-th epoch the model predicts the
    dataset's batches, `post_process_detections` turns the outputs into scored
    boxes in each original image (`y["orig_size"]`), and `evaluate_coco`
    scores them against `ground_truth`. The figures are added to the epoch's
    logs as `prefix + name` (`"val_AP"`, `"val_AP50"`, ...), so callbacks listed
    after this one (`ModelCheckpoint(monitor="val_AP", mode="max")`,
    `TensorBoard`) and the `History` see them.

    Args:
        dataset: batches `(x, y)` with `y["image_id"]` and `y["orig_size"]`
            (`coco_detection_dataset(..., training=False)`), or any iterable of
            such NumPy batches.
        ground_truth: the instances JSON path (or dict, or `COCO` object).
        every_n_epochs: int, evaluate when `(epoch + 1) % every_n_epochs == 0`.
        category_ids: label -> COCO category id (`DetectionInfo.category_ids`);
            None when labels are category ids.
        threshold: float, drop detections scoring below it.
        top_k: int or None, keep at most this many detections per image (COCO
            counts up to 100).
        prefix: str put before every metric name in the logs.
        max_batches: int or None, evaluate on the first batches only.
        results_path: optional path; the latest results JSON is written there.
        post_process: optional callable `(outputs, image_sizes, threshold,
            top_k) -> list of dicts`; default
            `keras_vtx.models.detr.detr_post_processing.post_process_detections`.
        verbose: bool, print pycocotools' summary.

    Example:
    >>> class Fixed(keras.Model):
    ...     def call(self, x):
    ...         batch = keras.ops.shape(x["images"])[0]
    ...         boxes = keras.ops.convert_to_tensor([[[0.3, 0.3, 0.4, 0.4]]])
    ...         logits = keras.ops.convert_to_tensor([[[5.0, -5.0]]])
    ...         return {"logits": keras.ops.tile(logits, (batch, 1, 1)),
    ...                 "boxes": keras.ops.tile(boxes, (batch, 1, 1))}
    >>> def post_process(outputs, sizes, threshold, top_k):  # a stand-in, for the example
    ...     h, w = np.asarray(sizes[0], "float64")
    ...     return [{"scores": np.array([0.9]), "labels": np.array([0]),
    ...              "boxes": np.array([[0.1 * w, 0.1 * h, 0.5 * w, 0.5 * h]])}]
    >>> ground_truth = {
    ...     "images": [{"id": 1, "width": 100, "height": 100}],
    ...     "categories": [{"id": 1, "name": "square"}],
    ...     "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
    ...                      "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0}]}
    >>> batch = ({"images": np.zeros((1, 8, 8, 3), "float32")},
    ...          {"image_id": np.array([1]), "orig_size": np.array([[100, 100]])})
    >>> callback = COCOEvaluationCallback([batch], ground_truth, category_ids=[1],
    ...                                   post_process=post_process)
    >>> callback.set_model(Fixed())
    >>> logs = {}
    >>> callback.on_epoch_end(0, logs)
    >>> round(logs["val_AP"], 3)
    1.0
    """

    def __init__(self, dataset, ground_truth, every_n_epochs=1, category_ids=None,
                 threshold=0.0, top_k=100, prefix="val_", max_batches=None, results_path=None,
                 post_process=None, verbose=False):
        super().__init__()
        if isinstance(every_n_epochs, bool) or int(every_n_epochs) != every_n_epochs or (
                every_n_epochs < 1):
            raise ValueError(f"`every_n_epochs` must be a positive int; "
                             f"received {every_n_epochs!r}.")
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"`max_batches` must be None or >= 1; received {max_batches!r}.")
        self.dataset = dataset
        self.ground_truth = ground_truth
        self.every_n_epochs = int(every_n_epochs)
        self.category_ids = None if category_ids is None else tuple(category_ids)
        self.threshold = threshold
        self.top_k = top_k
        self.prefix = prefix
        self.max_batches = max_batches
        self.results_path = results_path
        self.post_process = post_process
        self.verbose = verbose
        self.history = []
        _import_pycocotools()  # fail now, not after the first epoch, when it is missing

    def _post_process(self):
        if self.post_process is not None:
            return self.post_process
        from keras_vtx.models.detr.detr_post_processing import post_process_detections

        return post_process_detections

    def predict_detections(self):
        """Runs the model over the dataset: returns `(detections, image_ids)`."""
        post_process = self._post_process()
        detections, image_ids = [], []
        for step, (x, y) in enumerate(_as_numpy_batches(self.dataset)):
            if self.max_batches is not None and step >= self.max_batches:
                break
            # The compiled predict step (jit on JAX and TensorFlow), not an eager call.
            outputs = self.model.predict_on_batch(x)
            sizes = np.asarray(y["orig_size"])
            detections.extend(post_process(outputs, sizes, self.threshold, self.top_k))
            image_ids.extend(np.asarray(y["image_id"]).reshape(-1).tolist())
        return detections, image_ids

    def evaluate(self):
        """Predicts, post-processes and evaluates now: returns the dict of `evaluate_coco`."""
        detections, image_ids = self.predict_detections()
        results = detections_to_coco_results(detections, image_ids, self.category_ids)
        if self.results_path:
            write_coco_results(results, self.results_path)
        return evaluate_coco(results, self.ground_truth, eval_image_ids=image_ids,
                             verbose=self.verbose)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        metrics = self.evaluate()
        self.history.append({"epoch": epoch, **metrics})
        if logs is not None:
            logs.update({self.prefix + name: value for name, value in metrics.items()})
