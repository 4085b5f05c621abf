"""GET /v1/models and /v1/models/{id}: the one model a server serves, under the id its clients name."""

import time

from charrnn.serving.http import RequestError


class OpenAIServingModels:
    def __init__(self, model_id: str):
        self.model_id = model_id
        self.created = int(time.time())

    def card(self) -> dict:
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "charrnn"}

    def listed(self) -> dict:
        return {"object": "list", "data": [self.card()]}

    def retrieve(self, name: str) -> dict:
        """The card of the model `name`; a 404 model_not_found for any other than the one served."""
        if name != self.model_id:
            raise RequestError(
                f"the model {name!r} does not exist; this server serves {self.model_id!r}",
                param="model",
                status=404,
                code="model_not_found",
            )
        return self.card()

    def check_requested(self, name: str | None) -> None:
        """A 404 model_not_found for a request naming another model than the one served (None: that one)."""
        if name is not None and name != self.model_id:
            raise RequestError(
                f"the model {name!r} does not exist; this server serves {self.model_id!r} (GET /v1/models)",
                param="model",
                status=404,
                code="model_not_found",
            )
