"""The one exception type a user should ever see from charrnn.

Anything raised as `CharRNNError` is a problem with the user's input or environment; the CLI prints
its message as a single line and exits non-zero. Any other exception is a bug and keeps its traceback.
"""


class CharRNNError(Exception):
    """A user-facing error: the message names the problem and how to fix it."""


class WriteError(CharRNNError):
    """Writing a file failed (disk full, read-only, permissions); `reason` says which in plain words."""

    def __init__(self, path, exc: OSError):
        import errno

        reasons = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                   errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                   errno.EPERM: "permission denied", errno.EFBIG: "the file size limit was reached"}
        self.path = path
        self.reason = reasons.get(exc.errno, exc.strerror or str(exc))
        super().__init__(f"cannot write {path}: {self.reason}")
