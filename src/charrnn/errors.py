"""The one exception type a user should ever see from charrnn.

Anything raised as `CharRNNError` is a problem with the user's input or environment; the CLI prints
its message as a single line and exits non-zero. Any other exception is a bug and keeps its traceback.
"""


class CharRNNError(Exception):
    """A user-facing error: the message names the problem and how to fix it."""


class WriteError(CharRNNError):
    """Writing a file failed (disk full, read-only, permissions): `reason` says which in plain words and
    `action` what the user can do about it."""

    def __init__(self, path, exc: OSError):
        import errno

        full, denied = ("free some space",), ("fix the folder's permissions",)
        known = {
            errno.ENOSPC: ("the disk is full", *full),
            errno.EDQUOT: ("the disk quota is used up", *full),
            errno.EROFS: ("the file system is read-only", "make the disk writable"),
            errno.EACCES: ("permission denied", *denied),
            errno.EPERM: ("permission denied", *denied),
            errno.EFBIG: ("the file size limit was reached", "raise the limit (ulimit -f)"),
        }
        self.path = path
        self.reason, self.action = known.get(exc.errno, (exc.strerror or str(exc), "fix that"))
        super().__init__(f"cannot write {path}: {self.reason}")
