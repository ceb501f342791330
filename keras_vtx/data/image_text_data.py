"""What `load_pair_data()` returns: two image-text datasets and what describes them."""

from keras_vtx.data.loaded_data import LoadedData


class ImageTextData(LoadedData):
    """Training and validation image-text datasets of one source, with their held-out pairs.

    A `LoadedData` that unpacks as `train, validation = data`; the other
    attributes are read by name. The validation dataset is not shuffled and yields the validation
    images in the order of `validation_captions` (and `validation_labels`), so
    that embeddings computed from it line up with them (as long as no
    unreadable file was skipped: check `bad_files.count`).

    Args:
        train: the training `tf.data.Dataset` of `{"images", "token_ids"}` batches.
        validation: the validation `tf.data.Dataset`, same structure.
        bad_files: a `BadFileReport` of the image files skipped as unreadable
            (it fills up while the datasets are iterated).
        num_train: int or None, elements in one training epoch before bad files
            are skipped (images, or image-caption pairs when captions are
            flattened); None when unknown.
        num_validation: int or None, images in the validation split.
        batch_size: int, the global batch size of both datasets.
        tokenizer: the callable that turned captions into `token_ids`; use it
            for prompts (zero-shot classification) so that they match.
        validation_captions: list with, for each validation image, the list
            of all its captions (the validation dataset uses the first); None
            when the source does not keep them in memory (TFDS).
        class_names: tuple of str for sources with classes (`"shapes"`), else None.
        validation_labels: int32 NumPy array, the class of each validation
            image, for sources with classes, else None.

    Example:
    >>> from keras_vtx.data.bad_file_report import BadFileReport
    >>> data = ImageTextData(None, None, BadFileReport(), 100, 20, 32,
    ...                      validation_captions=[["a red circle"]] * 20)
    >>> train, validation = data
    >>> data.steps_per_epoch, data.validation_captions[0]
    (3, ['a red circle'])
    """

    def __init__(self, train, validation, bad_files, num_train, num_validation, batch_size,
                 tokenizer=None, validation_captions=None, class_names=None,
                 validation_labels=None):
        super().__init__(train, validation, bad_files, num_train, num_validation, batch_size,
                         class_names=class_names)
        self.tokenizer = tokenizer
        self.validation_captions = validation_captions
        self.validation_labels = validation_labels
