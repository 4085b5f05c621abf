"""The one exception type a user should ever see from charrnn.

Anything raised as `CharRNNError` is a problem with the user's input or environment; the CLI prints
its message as a single line and exits non-zero. Any other exception is a bug and keeps its traceback.
"""


class CharRNNError(Exception):
    """A user-facing error: the message names the problem and how to fix it."""
