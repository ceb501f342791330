"""What `load_classification_data()` returns: two datasets, class names and a report."""


class ClassificationData:
    """Training and validation datasets of one data source, with what describes them.

    Unpacks as `train, validation, class_names = data`; the other attributes
    are read by name.

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

    def __init__(self, train, validation, class_names, bad_files, num_train, num_validation,
                 batch_size):
        self.train = train
        self.validation = validation
        self.class_names = tuple(class_names)
        self.bad_files = bad_files
        self.num_train = int(num_train)
        self.num_validation = int(num_validation)
        self.batch_size = int(batch_size)

    @property
    def steps_per_epoch(self):
        """Full training batches per epoch (the training dataset drops the remainder)."""
        return self.num_train // self.batch_size

    def __iter__(self):
        return iter((self.train, self.validation, self.class_names))

    def __repr__(self):
        return (
            f"ClassificationData(classes={len(self.class_names)}, num_train={self.num_train}, "
            f"num_validation={self.num_validation}, batch_size={self.batch_size}, "
            f"bad_files={self.bad_files.count})"
        )
