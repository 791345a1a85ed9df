"""Reading a pydantic model's own schema: the field an error points at, a field's bounds, and
one validation error said the house way (`must be >= 1 (got 0)`).

The bounds live once, as pydantic constraints (`Field(ge=, gt=, lt=)`, `Literal`); error
messages, the Prefect run form and docs/configuration.md are all read from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, get_args

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

_BOUND_ERRORS = ("greater_than_equal", "greater_than", "less_than", "less_than_equal")


def field_of(model: type[BaseModel], loc: tuple[Any, ...]) -> FieldInfo | None:
    """The field an error location points at through nested models, or None (e.g. a list item)."""
    field = None
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not isinstance(fields, dict) or part not in fields:
            return None
        field = fields[part]
        model = field.annotation
    return field


def bounds_text(field: FieldInfo) -> str:
    """A field's numeric bounds: '>= 1', '> 0', 'in [0, 1)'; '' when it has none."""
    low = high = None
    for c in field.metadata:
        if isinstance(c, Ge):
            low = ("[", ">=", c.ge)
        elif isinstance(c, Gt):
            low = ("(", ">", c.gt)
        elif isinstance(c, Le):
            high = ("]", "<=", c.le)
        elif isinstance(c, Lt):
            high = (")", "<", c.lt)
    if low and high:
        return f"in {low[0]}{low[2]}, {high[2]}{high[0]}"
    bound = low or high
    return f"{bound[1]} {bound[2]}" if bound else ""


def describe_error(
    model: type[BaseModel], error: ErrorDetails, nouns: Mapping[str, str] | None = None
) -> str:
    """What is wrong with one value: `must be in [0, 1) (got 1.5)`, `unknown method 'x'; ...`.

    `nouns` names what a Literal field holds (`method` -> "unknown method 'x'"); other Literal
    fields say "unknown value". Errors of other kinds keep pydantic's text plus the bad value.
    """
    field = field_of(model, error["loc"])
    got = error.get("input")
    if error["type"] in _BOUND_ERRORS and field is not None:
        if float in (field.annotation, *get_args(field.annotation)):
            got = float(got)  # the value as the field holds it: 0 -> 0.0
        empty = " or empty" if field.default is None else ""  # an optional field may stay empty
        return f"must be {bounds_text(field)}{empty} (got {got!r})"
    if error["type"] == "literal_error" and error["loc"]:
        noun = (nouns or {}).get(str(error["loc"][-1]), "value")
        choices = error["ctx"]["expected"].replace("'", "").replace(" or ", ", ")
        return f"unknown {noun} {got!r}; choose one of {choices}"
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] != "value_error" and "input" in error:
        msg = f"{msg} (got {got!r})"
    return msg
