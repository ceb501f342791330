"""What every `load_*_data` function returns: two datasets and what describes them."""


def full_batches(num_train, batch_size):
    """Full training batches per epoch (training drops the remainder); None when unknown."""
    if num_train is None or not batch_size:
        return None
    return num_train // batch_size


class LoadedData:
    """Training and validation datasets of one source, with the same attributes for every loader.

    `load_classification_data` and `load_palette_data` return a
    `ClassificationData`, `load_pair_data` an `ImageTextData`,
    `load_detection_data` a `DetectionData`: each is a `LoadedData` with
    these attributes, and each unpacks as its loader always has (see
    `unpacks_as`).

    Args:
        train: the training `tf.data.Dataset`.
        validation: the validation `tf.data.Dataset`.
        bad_files: a `BadFileReport` of the files skipped as unreadable (it
            fills up while the datasets are iterated).
        num_train: int or None, training examples per epoch before bad files
            are skipped; None when unknown.
        num_validation: int or None, validation examples.
        batch_size: int, the global batch size of both datasets.
        class_names: tuple of str, or None for sources without classes.

    Example:
    >>> from keras_vtx.data.bad_file_report import BadFileReport
    >>> data = LoadedData(None, None, BadFileReport(), 100, 20, 32)
    >>> data.steps_per_epoch, len(tuple(data))
    (3, 2)
    """

    # The attributes that unpacking yields, in order.
    unpacks_as = ("train", "validation")

    def __init__(self, train, validation, bad_files, num_train, num_validation, batch_size,
                 class_names=None):
        self.train = train
        self.validation = validation
        self.bad_files = bad_files
        self.num_train = None if num_train is None else int(num_train)
        self.num_validation = None if num_validation is None else int(num_validation)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.class_names = None if class_names is None else tuple(class_names)

    @property
    def steps_per_epoch(self):
        """Full training batches per epoch (the training dataset drops the remainder)."""
        return full_batches(self.num_train, self.batch_size)

    def __iter__(self):
        return iter(tuple(getattr(self, name) for name in self.unpacks_as))

    def __repr__(self):
        classes = "" if self.class_names is None else f"classes={len(self.class_names)}, "
        return (
            f"{type(self).__name__}({classes}num_train={self.num_train}, "
            f"num_validation={self.num_validation}, batch_size={self.batch_size}, "
            f"bad_files={self.bad_files.count})"
        )
