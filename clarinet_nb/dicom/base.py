"""A pydantic base model whose validation errors are InvalidInputError."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from clarinet_nb.errors import InvalidInputError

__all__ = ["StrictModel", "validation_message"]


def validation_message(exc: ValidationError) -> str:
    """Summarise a pydantic ValidationError in one line per field."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or exc.title
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    return f"invalid {exc.title}: " + "; ".join(parts)


class StrictModel(BaseModel):
    """Base of our request models: invalid input raises InvalidInputError."""

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            message = validation_message(exc)
        else:
            return
        # raised outside the handler: pydantic's own error repeats the input value
        # (patient data), so it must not be chained as cause or context
        raise InvalidInputError(message)
