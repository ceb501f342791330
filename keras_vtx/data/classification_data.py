"""What `load_classification_data()` returns: two datasets, class names and a report."""

from keras_vtx.data.loaded_data import LoadedData


class ClassificationData(LoadedData):
    """Training and validation datasets of one data source, with what describes them.

    A `LoadedData` that unpacks as `train, validation, class_names = data`;
    the other attributes are read by name.

    Args:
        train: the training `tf.data.Dataset` of `(images, labels)` batches.
        validation: the validation `tf.data.Dataset`.
        class_names: tuple of str, the name of each label.
        bad_files: a `BadFileReport` of the files skipped as unreadable (it
            fills up while the datasets are iterated).
        num_train: int, examples in the training split before bad files are skipped.
        num_validation: int, examples in the validation split.
        batch_size: int, the global batch size of both datasets.

    Example:
    >>> from keras_vtx.data.bad_file_report import BadFileReport
    >>> data = ClassificationData(None, None, ("a", "b"), BadFileReport(), 100, 20, 32)
    >>> train, validation, class_names = data
    >>> class_names, data.steps_per_epoch
    (('a', 'b'), 3)
    """

    unpacks_as = ("train", "validation", "class_names")

    def __init__(self, train, validation, class_names, bad_files, num_train, num_validation,
                 batch_size):
        super().__init__(train, validation, bad_files, num_train, num_validation, batch_size,
                         class_names=class_names)
