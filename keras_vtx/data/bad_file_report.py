"""A record of the image files that a pipeline could not read and skipped."""

import logging
import threading

logger = logging.getLogger("keras_vtx.data")


class BadFileReport:
    """Counts the unreadable image files a pipeline skipped and keeps the first few names.

    The pipelines of `keras_vtx.data` decode files with `tf.io`, retry a file
    that fails with PIL (inside `tf.numpy_function`) and call `add()` for each
    file that PIL cannot read either, from tf.data's worker threads: the
    report is thread-safe. A file that fails again in a later epoch is counted
    once. The first `max_examples` files are also logged as warnings on the
    `"keras_vtx.data"` logger.

    Args:
        max_examples: int, how many file names (with their errors) to keep and log.

    Example:
    >>> report = BadFileReport()
    >>> report.add("cats/broken.jpg", "cannot identify image file")
    >>> report.add("cats/broken.jpg", "cannot identify image file")
    >>> report.count, report.examples
    (1, ['cats/broken.jpg'])
    """

    def __init__(self, max_examples=5):
        if int(max_examples) < 0:
            raise ValueError(f"`max_examples` must be >= 0; received {max_examples!r}.")
        self.max_examples = int(max_examples)
        self._lock = threading.Lock()
        self._seen = set()
        self.examples = []
        self.errors = {}

    @property
    def count(self):
        """The number of distinct files skipped so far."""
        with self._lock:
            return len(self._seen)

    def add(self, path, error):
        """Records that `path` could not be decoded because of `error` (a message)."""
        path = path.decode() if isinstance(path, bytes) else str(path)
        with self._lock:
            if path in self._seen:
                return
            self._seen.add(path)
            if len(self.examples) < self.max_examples:
                self.examples.append(path)
                self.errors[path] = str(error)
                logger.warning("Skipping unreadable image file %s: %s", path, error)

    def to_dict(self):
        """A JSON-friendly summary: `{"count", "examples", "errors"}`."""
        with self._lock:
            return {
                "count": len(self._seen),
                "examples": list(self.examples),
                "errors": dict(self.errors),
            }

    def __repr__(self):
        return f"BadFileReport(count={self.count}, examples={self.examples!r})"
