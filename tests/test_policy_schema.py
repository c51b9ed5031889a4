"""policies/schema.json: a valid schema, which every good policy meets and the bad ones
fail where the reader refuses them."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from nanoclaw.broker.config_reader import ConfigError
from nanoclaw.broker.policy import (
    DEFAULT_LIMITS,
)
from nanoclaw.broker.policy_file import parse_policy
from tests.support.policies import (
    DELETE,
    EXAMPLE,
    FULL,
    LIMIT_BOUNDS,
    POLICY_PATH,
    SCHEMA,
    VALID_FIXTURES,
    at,
)

# --- the schema -----------------------------------------------------------------------


def schema_problems(
    schema: dict[str, Any], value: object, root: dict[str, Any], where: str = ""
) -> list[str]:
    """A small JSON Schema check, for the keywords schema.json uses (no dependency)."""
    problems: list[str] = []
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        problems += schema_problems(target, value, root, where)
    kinds = {
        "object": dict,
        "array": list,
        "string": str,
        "boolean": bool,
        "integer": int,
    }
    kind = schema.get("type")
    if kind and (
        not isinstance(value, kinds[kind]) or (kind == "integer" and isinstance(value, bool))
    ):
        return [f"{where}: not {kind}"]
    if "const" in schema and (value != schema["const"] or type(value) is not type(schema["const"])):
        problems.append(f"{where}: not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: not in enum")
    if "not" in schema and not schema_problems(schema["not"], value, root, where):
        problems.append(f"{where}: matches 'not'")
    if "anyOf" in schema and all(schema_problems(s, value, root, where) for s in schema["anyOf"]):
        problems.append(f"{where}: matches nothing in anyOf")
    for sub in schema.get("allOf", []):
        problems += schema_problems(sub, value, root, where)
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f"{where}: does not match {schema['pattern']}")
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get(
            "maxLength", len(value)
        ):
            problems.append(f"{where}: bad length")
    if isinstance(value, int) and not isinstance(value, bool):
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            problems.append(f"{where}: out of range")
    if isinstance(value, list):
        if schema.get("uniqueItems") and len({json.dumps(v) for v in value}) < len(value):
            problems.append(f"{where}: items not unique")
        for index, item in enumerate(value):
            problems += schema_problems(schema.get("items", {}), item, root, f"{where}[{index}]")
    if isinstance(value, dict):
        problems += [
            f"{where}.{name}: missing" for name in schema.get("required", []) if name not in value
        ]
        properties = schema.get("properties", {})
        for name, item in value.items():
            if "propertyNames" in schema:
                problems += schema_problems(
                    schema["propertyNames"], name, root, f"{where}.{name} (name)"
                )
            if name in properties:
                problems += schema_problems(properties[name], item, root, f"{where}.{name}")
            elif schema.get("additionalProperties") is False:
                problems.append(f"{where}.{name}: not allowed")
            elif isinstance(schema.get("additionalProperties"), dict):
                problems += schema_problems(
                    schema["additionalProperties"], item, root, f"{where}.{name}"
                )
    return problems


def schema_valid(value: object) -> bool:
    """Both the hand check and, when it is installed, the jsonschema package agree."""
    schema = json.loads(SCHEMA.read_text())
    ours = not schema_problems(schema, value, schema)
    try:
        import jsonschema
    except ImportError:
        return ours
    theirs = jsonschema.Draft202012Validator(schema).is_valid(value)
    assert ours == theirs, (value, schema_problems(schema, value, schema))
    return ours


def test_the_schema_is_a_valid_2020_12_schema() -> None:
    schema = json.loads(SCHEMA.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("name", VALID_FIXTURES)
def test_every_valid_fixture_conforms_to_the_schema(name: str) -> None:
    parse_policy(VALID_FIXTURES[name], POLICY_PATH)  # valid to the parser, too
    assert schema_valid(VALID_FIXTURES[name])


def test_the_example_conforms_to_the_schema() -> None:
    assert schema_valid(json.loads(EXAMPLE.read_text()))


@pytest.mark.parametrize(
    ("location", "value"),
    [
        (("version",), 2),
        (("extra",), 1),
        (("data_dir",), DELETE),
        (("data_dir",), "relative"),
        (("groups", "family", "uid"), 65534),
        (("groups", "family", "uid"), DELETE),
        (("groups", "global"), {"uid": 61009}),
        (("groups", "Bad"), {"uid": 61009}),
        (("groups", "family", "mounts", 0, "sandbox"), "/workspace/group"),
        (("groups", "family", "mounts", 0, "sandbox"), "/srv/x"),
        (("groups", "family", "mounts", 0, "sandbox"), "/workspace/a:b"),
        (("groups", "family", "mounts", 0, "host"), "/srv/../etc"),
        (("groups", "main", "egress", "domains", 0), "*.com"),
        (("groups", "main", "egress", "domains", 0), "GitHub.com"),
        (("groups", "main", "limits", "tasks_max"), 4097),
        (("groups", "main", "path"), ["bin"]),
        (("groups", "main", "path"), ["/opt/a:/opt/b"]),
        (("groups", "main", "empty_paths"), ["/"]),
        (("groups", "main", "empty_paths"), ["relative"]),
        (("groups", "main", "egress", "cidrs"), ["192.0.2.0/24"]),  # and domains
        (("proxy",), {"address": "127.0.0.1", "port": 3128}),
        (("$comment",), 1),
    ],
)
def test_the_schema_refuses_what_the_parser_refuses(
    location: tuple[str | int, ...], value: object
) -> None:
    data = at(FULL, location, value)
    with pytest.raises(ConfigError):
        parse_policy(data, POLICY_PATH)
    assert not schema_valid(data)


def test_schema_and_parser_agree_on_the_limits() -> None:
    schema = json.loads(SCHEMA.read_text())["$defs"]["limits"]["properties"]
    for name, (low, high) in LIMIT_BOUNDS.items():
        assert (schema[name]["minimum"], schema[name]["maximum"]) == (low, high)
        assert schema[name]["default"] == getattr(DEFAULT_LIMITS, name)
