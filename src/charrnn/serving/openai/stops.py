"""Stop strings of a completion: each sample ends at its first one, which is not returned."""


class Stops:
    """Ends each sample at its first stop string, which is not returned. A streamed sample holds back the
    end of its text that could begin a stop string, so no part of a stop string is ever sent."""

    def __init__(self, samples: int, stops: list[str]):
        self.stops = stops
        self.texts = [""] * samples
        self.sent = [0] * samples  # characters of each text already given out
        self.reasons: list[str | None] = [None] * samples  # "stop" once a stop string ended the sample

    @property
    def done(self) -> bool:
        return all(self.reasons)

    def feed(self, chunk: list[str]) -> list[str]:
        """Add one slice of generation (a string per sample); returns the new text safe to give out."""
        out = []
        for i, piece in enumerate(chunk):
            if self.reasons[i]:
                out.append("")
                continue
            text = self.texts[i] + piece
            # A stop string starting before `sent` would have been found earlier (what was sent never
            # ends with the start of one).
            found = [at for at in (text.find(s, self.sent[i]) for s in self.stops) if at >= 0]
            if found:
                text, self.reasons[i] = text[: min(found)], "stop"
                safe = len(text)
            else:
                safe = len(text) - max(
                    (k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0
                )
            self.texts[i] = text
            out.append(text[self.sent[i] : max(safe, self.sent[i])])
            self.sent[i] = max(safe, self.sent[i])
        return out

    def finish(self) -> list[str]:
        """The end of generation: what each sample still holds back; the rest finished by length."""
        out = [text[sent:] for text, sent in zip(self.texts, self.sent)]
        self.sent = [len(t) for t in self.texts]
        self.reasons = [reason or "length" for reason in self.reasons]
        return out
