"""A fast yes/no check of a record against its JSON Schema, compiled from the same schema files (one source of
truth) for the keywords the record schemas use. A consumer that takes thousands of records per second (the
fleet service) accepts a record when this says valid, and asks jsonschema (schemas.validator) for the reason
when it says invalid. A schema with a keyword outside the supported set is not compiled (compile_schema raises
UnsupportedSchemaError) and its records go through jsonschema alone; tests check both agree on valid and broken records.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from functools import cache
from typing import Any

from qc_contract import schemas

Check = Callable[[Any], bool]
ANNOTATIONS = {"$schema", "$id", "title", "description", "contentEncoding", "contentMediaType", "examples", "default"}


class UnsupportedSchemaError(ValueError):
    """The schema uses a keyword this checker does not implement."""


def _type_check(names: list[str]) -> Check:
    """One function for a list of JSON types (bool is not a number; 1.0 is an integer, as jsonschema says)."""
    exact: set[type] = set()
    integer = number = nullable = False
    for name in names:
        if name == "string":
            exact.add(str)
        elif name == "boolean":
            exact.add(bool)
        elif name == "object":
            exact.add(dict)
        elif name == "array":
            exact.add(list)
        elif name == "null":
            nullable = True
        elif name == "integer":
            integer = True
        elif name == "number":
            number = True
        else:
            raise UnsupportedSchemaError(f"type {name!r}")
    exact_types = frozenset(exact)

    def check(v: Any) -> bool:
        t = type(v)
        if t in exact_types or (nullable and v is None):
            return True
        if number and (t is int or t is float):
            return True
        if integer:
            return t is int or (t is float and math.isfinite(v) and v.is_integer())
        return False

    return check


def _is_number(v: Any) -> bool:
    return type(v) is int or type(v) is float


def _all(checks: list[Check]) -> Check:
    if len(checks) == 1:
        return checks[0]

    def check(v: Any) -> bool:
        for c in checks:  # noqa: SIM110 (a plain loop: this runs per field of thousands of records/s)
            if not c(v):
                return False
        return True

    return check


def _key(value: Any) -> Any:
    """A hashable key with JSON equality: true != 1, 1 == 1.0."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", value)
    if isinstance(value, list):
        return ("array", tuple(_key(v) for v in value))
    if isinstance(value, dict):
        return ("object", tuple(sorted((k, _key(v)) for k, v in value.items())))
    return (type(value).__name__, value)


def compile_schema(schema: dict[str, Any]) -> Check:
    checks: list[Check] = []
    unknown = set(schema) - ANNOTATIONS - {
        "type", "const", "enum", "pattern", "minimum", "maximum", "minLength", "maxLength", "items", "minItems",
        "maxItems", "uniqueItems", "properties", "required", "additionalProperties"}  # fmt: skip
    if unknown:
        raise UnsupportedSchemaError(f"keywords {sorted(unknown)}")
    if "type" in schema:
        checks.append(_type_check(schema["type"] if isinstance(schema["type"], list) else [schema["type"]]))
    if "const" in schema:
        const = _key(schema["const"])
        checks.append(lambda v: _key(v) == const)
    if "enum" in schema:
        allowed = frozenset(_key(e) for e in schema["enum"])
        checks.append(lambda v: _key(v) in allowed)
    if "pattern" in schema:
        regex = re.compile(schema["pattern"])
        checks.append(lambda v: not isinstance(v, str) or regex.search(v) is not None)
    for keyword, ok in (("minimum", lambda v, m: v >= m), ("maximum", lambda v, m: v <= m)):
        if keyword in schema:
            checks.append(lambda v, m=schema[keyword], ok=ok: not _is_number(v) or ok(v, m))
    if "minLength" in schema:
        checks.append(lambda v, n=schema["minLength"]: not isinstance(v, str) or len(v) >= n)
    if "maxLength" in schema:
        checks.append(lambda v, n=schema["maxLength"]: not isinstance(v, str) or len(v) <= n)
    if "items" in schema:
        item = compile_schema(schema["items"])
        checks.append(lambda v: type(v) is not list or all(map(item, v)))
    if "minItems" in schema:
        checks.append(lambda v, n=schema["minItems"]: not isinstance(v, list) or len(v) >= n)
    if "maxItems" in schema:
        checks.append(lambda v, n=schema["maxItems"]: not isinstance(v, list) or len(v) <= n)
    if schema.get("uniqueItems"):
        checks.append(lambda v: not isinstance(v, list) or len({_key(x) for x in v}) == len(v))
    properties = {name: compile_schema(sub) for name, sub in schema.get("properties", {}).items()}
    required = tuple(schema.get("required", ()))
    extra = schema.get("additionalProperties", True)
    extra_check = None if isinstance(extra, bool) else compile_schema(extra)

    if properties or required or extra is not True:

        def check_object(v: Any) -> bool:
            if type(v) is not dict:
                return True
            for name in required:
                if name not in v:
                    return False
            for name, item in v.items():
                sub = properties.get(name)
                if sub is not None:
                    if not sub(item):
                        return False
                elif extra is False or (extra_check is not None and not extra_check(item)):
                    return False
            return True

        checks.append(check_object)
    return _all(checks) if checks else (lambda v: True)


@cache
def checker(name: str) -> Check | None:
    """The compiled check of the record schema `name`, or None when it must go through jsonschema."""
    try:
        return compile_schema(schemas.schema(name))
    except UnsupportedSchemaError:
        return None


def is_valid(name: str, record: Any) -> bool:
    check = checker(name)
    return check(record) if check is not None else schemas.validator(name).is_valid(record)
