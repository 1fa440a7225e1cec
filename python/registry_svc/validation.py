"""Checking data against a request model: one 400 naming the first bad field as the
client wrote it (`tags[1]`, `healthCheck.intervalSeconds`), every problem in `errors`,
and pydantic's error kinds put in plain words."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from registry_svc.errors import ApiError, field_error

# What a pattern means, in words (the models add theirs): the error a client sees when a
# value does not match.
PATTERN_PROBLEMS: dict[str, str] = {}

M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], data: dict[str, Any], *, query: bool = False) -> M:
    """`data` checked against `model`; otherwise a 400 naming the first bad field, with
    every problem found in `errors` when there are several (the parameter alone for a
    `query`, where the position of a repeated value means nothing)."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = list(dict.fromkeys(describe(error, query=query) for error in e.errors(include_url=False)))
        raise ApiError(400, problems[0], errors=problems if len(problems) > 1 else None) from None


def parse_query(model: type[M], params: dict[str, list[str]], repeatable: frozenset[str] = frozenset()) -> M:
    """A query (name -> values) checked against `model`. A parameter that is not
    `repeatable` may be given once."""
    fields = model.model_fields
    data: dict[str, Any] = {}
    for name, values in params.items():
        if name not in fields:
            raise field_error(name, f"unknown parameter; use {', '.join(fields)}")
        if name in repeatable:
            data[name] = values
        elif len(values) > 1:
            raise field_error(name, "give it once")
        else:
            data[name] = values[0]
    return parse(model, data, query=True)


def describe(error: Any, *, query: bool = False) -> str:
    """`field: problem` for one pydantic error."""
    loc = [part for part in error["loc"] if not (query and isinstance(part, int))]
    ctx = error.get("ctx") or {}
    kind = error["type"]
    if kind == "field":
        loc.append(ctx["field"])
        problem = ctx["problem"]
    else:
        problem = _problem(kind, ctx, error.get("input"), error["msg"])
    path = _path(loc)
    return f"{path}: {problem}" if path else problem


def _path(loc: list[Any]) -> str:
    """`definition.ports[0].host`; a bad key of a map is `metadata key`."""
    out = ""
    key_of_map = bool(loc) and loc[-1] == "[key]"
    if key_of_map:
        loc = loc[:-2]
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out + " key" if key_of_map else out


_TYPE_PROBLEMS = {
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "bool_type": "must be true or false",
    "list_type": "must be an array",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
}


def _problem(kind: str, ctx: dict[str, Any], value: Any, fallback: str) -> str:
    if kind in _TYPE_PROBLEMS:
        return f"{_TYPE_PROBLEMS[kind]}, not {type_name(value)}"
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "string_too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else f"must be at least {ctx['min_length']} characters"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters"
    if kind == "too_long":
        noun = "entries" if ctx.get("field_type") == "Dictionary" else "items"
        return f"must have at most {ctx['max_length']} {noun}"
    if kind == "too_short":
        return f"must have at least {ctx['min_length']} item(s)"
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']}, got {value}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']}, got {value}"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}"
    if kind == "string_pattern_mismatch":
        return PATTERN_PROBLEMS.get(ctx["pattern"], f"must match {ctx['pattern']}")
    if kind == "value_error":
        return str(ctx["error"])
    return fallback


def type_name(value: Any) -> str:
    """JSON's name for the type of `value`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
