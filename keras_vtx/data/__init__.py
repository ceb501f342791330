"""tf.data pipelines and the embedded "shapes" data set.

This is the one part of keras_vtx that needs TensorFlow (for `tf.data`); the
shapes generator itself (`keras_vtx.data.shapes`) is NumPy only. The datasets
feed `model.fit()` on every Keras backend.
"""

from keras_vtx.data.bad_file_report import BadFileReport
from keras_vtx.data.classification_data import ClassificationData
from keras_vtx.data.coco_detection import (
    DEFAULT_SHAPES_DETECTION_IMAGES,
    DetectionData,
    DetectionInfo,
    coco_detection_dataset,
    detr_pad_buckets,
    load_detection_data,
    read_coco_annotations,
    validate_detection_targets,
)
from keras_vtx.data.image_classification import (
    DEFAULT_SHAPES_IMAGES,
    IMAGE_EXTENSIONS,
    dataset_from_arrays,
    dataset_from_directory,
    dataset_from_files,
    dataset_from_tfds,
    list_image_files,
    load_classification_data,
)
from keras_vtx.data.image_text import (
    dataset_from_pairs,
    group_captions,
    load_pair_data,
    pairs_from_csv,
    pairs_from_jsonl,
    read_pairs,
)
from keras_vtx.data.image_text_data import ImageTextData
from keras_vtx.data.loaded_data import LoadedData
from keras_vtx.data.palette_sequences import (
    fit_palette,
    load_palette_data,
    quantize_images_tf,
)
from keras_vtx.data.shapes import (
    SHAPE_CLASSES,
    export_shapes_coco,
    generate_shapes,
    shapes_to_coco,
)

__all__ = [
    "BadFileReport",
    "ClassificationData",
    "DEFAULT_SHAPES_DETECTION_IMAGES",
    "DEFAULT_SHAPES_IMAGES",
    "DetectionData",
    "DetectionInfo",
    "IMAGE_EXTENSIONS",
    "ImageTextData",
    "LoadedData",
    "SHAPE_CLASSES",
    "coco_detection_dataset",
    "detr_pad_buckets",
    "dataset_from_arrays",
    "dataset_from_directory",
    "dataset_from_files",
    "dataset_from_pairs",
    "dataset_from_tfds",
    "export_shapes_coco",
    "fit_palette",
    "generate_shapes",
    "group_captions",
    "list_image_files",
    "load_classification_data",
    "load_detection_data",
    "load_palette_data",
    "load_pair_data",
    "pairs_from_csv",
    "pairs_from_jsonl",
    "quantize_images_tf",
    "read_coco_annotations",
    "read_pairs",
    "shapes_to_coco",
    "validate_detection_targets",
]
