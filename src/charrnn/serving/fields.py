"""Pydantic field helpers shared by both APIs' request models (protocol.py, openai/protocol.py).

A request model's JSON Schema carries the server's limits for clients, but the limits are checked by the
shared code (decoding's checks, http.check_limits), whose 400s say what is allowed; so the bounds here are
schema only, and a model with this server's limits is the module-level one with its fields narrowed."""

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field

# JSON, and JSON Schema, count 5.0 as the integer 5 (schemathesis sends it as one); true and "5" stay errors.
Integer = Annotated[int, BeforeValidator(lambda v: int(v) if isinstance(v, float) and v.is_integer() else v)]


def bounds(**keywords) -> dict:
    """Field() keywords that put JSON Schema bounds in the schema for clients; the shared checks enforce
    them, with 400s that say what is allowed."""
    return {"json_schema_extra": keywords}


def narrowed(model: type[BaseModel], name: str, *, default: Any = ..., description: str | None = None, **schema):
    """`model`'s field `name` as a (type, Field) pair for pydantic.create_model, with `schema` added to its
    bounds and, when given, another default or description."""
    field = model.model_fields[name]
    return field.rebuild_annotation(), Field(
        field.default if default is ... else default,
        description=field.description if description is None else description,
        **bounds(**(field.json_schema_extra or {}), **schema),
    )
