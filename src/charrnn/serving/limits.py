"""The server's limits on one request: `charrnn serve` flags, read by the CLI before anything is served
(stdlib only, so parsing arguments never imports FastAPI)."""

from dataclasses import dataclass

from charrnn.errors import CharRNNError


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for; each is a `charrnn serve` flag."""

    max_length: int = 5000  # characters generated per sample
    max_samples: int = 16  # samples per request
    max_prompt_chars: int = 4000  # characters of prompt
    max_body_bytes: int = 65536  # size of the request body
    max_batch: int = 64  # rows (samples of all requests) stepped together; more requests wait in a queue

    def check(self) -> None:
        """A CharRNNError naming the flag for a limit that cannot work."""
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CharRNNError(f"--{name.replace('_', '-')} must be at least 1; got {value}")
        if self.max_batch < self.max_samples:  # a request's rows always step together
            raise CharRNNError(f"--max-batch ({self.max_batch}) must be at least --max-samples ({self.max_samples})")
