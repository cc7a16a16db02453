"""Would callers of the last pushed version break? Compare two OpenAPI schemas made by
`cogkit.schema.openapi_schema`: the locked one (last push) and the current one.

Breaking, for a caller who sent inputs that the old version accepted: a removed input, a removed
choice, a changed type (or null no longer accepted), a new required input, a tightened bound; and a
changed output type, which breaks whoever reads the result.
"""

from dataclasses import dataclass

REMOVED_INPUT = "removed input"
REMOVED_CHOICE = "removed choice"
TYPE_CHANGE = "type change"
NEW_REQUIRED = "new required input"
TIGHTENED = "tightened bound"
OUTPUT_CHANGE = "output type change"

# bound -> +1 when a larger value accepts fewer inputs (a lower bound), -1 for an upper bound
BOUNDS = {"minimum": +1, "exclusiveMinimum": +1, "minLength": +1, "minItems": +1,
          "maximum": -1, "exclusiveMaximum": -1, "maxLength": -1, "maxItems": -1}
TYPE_KEYS = ("type", "format")


@dataclass(frozen=True)
class Violation:
    kind: str
    name: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.name}: {self.detail}"


def inputs_of(schema: dict) -> tuple[dict, set]:
    """Input properties with any choice component resolved into the property, and the required set."""
    components = schema["components"]["schemas"]
    spec = components["Input"]
    props = {}
    for name, prop in spec.get("properties", {}).items():
        resolved = {k: v for k, v in prop.items() if k != "allOf"}
        for part in prop.get("allOf", []):
            ref = part.get("$ref", "").rsplit("/", 1)[-1]
            resolved.update({k: v for k, v in components.get(ref, {}).items()
                             if k not in ("title", "description")})
        props[name] = resolved
    return props, set(spec.get("required", []))


def type_signature(prop: dict) -> tuple:
    items = prop.get("items", {})
    return tuple(prop.get(k) for k in TYPE_KEYS) + tuple(items.get(k) for k in TYPE_KEYS)


def describe_type(prop: dict) -> str:
    kind = prop.get("type", "any")
    if prop.get("format"):
        kind += f" ({prop['format']})"
    if kind.startswith("array"):
        kind += f" of {describe_type(prop.get('items', {}))}"
    return kind


def input_violations(name: str, old: dict, new: dict) -> list[Violation]:
    found = []
    if type_signature(old) != type_signature(new):
        found.append(Violation(TYPE_CHANGE, name, f"{describe_type(old)} -> {describe_type(new)}"))
        return found  # bounds of a different type cannot be compared
    if old.get("nullable") and not new.get("nullable"):
        found.append(Violation(TYPE_CHANGE, name, "no longer accepts null"))
    if "enum" in new:
        if "enum" not in old:
            found.append(Violation(TIGHTENED, name, f"now limited to the choices {new['enum']}"))
        else:
            for choice in old["enum"]:
                if choice not in new["enum"]:
                    found.append(Violation(REMOVED_CHOICE, name, f"{choice!r} is no longer a choice"))
    for bound, direction in BOUNDS.items():
        before, after = old.get(bound), new.get(bound)
        if after is None or isinstance(after, bool):
            continue
        if before is None:
            found.append(Violation(TIGHTENED, name, f"new {bound} {after}"))
        elif (after - before) * direction > 0:
            found.append(Violation(TIGHTENED, name, f"{bound} {before} -> {after}"))
    if new.get("pattern") and new.get("pattern") != old.get("pattern"):
        was = f"from {old['pattern']!r} " if old.get("pattern") else ""
        found.append(Violation(TIGHTENED, name, f"pattern changed {was}to {new['pattern']!r}"))
    return found


def comparable_output(schema: dict) -> dict:
    output = dict(schema["components"]["schemas"].get("Output", {}))
    output.pop("title", None)
    return output


def breaking_changes(old_schema: dict, new_schema: dict) -> list[Violation]:
    """Every way `new_schema` breaks a caller of `old_schema`, in input order; empty when compatible."""
    old_props, old_required = inputs_of(old_schema)
    new_props, new_required = inputs_of(new_schema)
    found = []
    for name, old in old_props.items():
        if name not in new_props:
            found.append(Violation(REMOVED_INPUT, name, "callers that send it get 422"))
        else:
            found += input_violations(name, old, new_props[name])
    for name in new_props:
        if name in new_required and name not in old_required:
            why = "was optional" if name in old_props else "callers do not send it"
            found.append(Violation(NEW_REQUIRED, name, why))
    before, after = comparable_output(old_schema), comparable_output(new_schema)
    if before != after:
        found.append(Violation(OUTPUT_CHANGE, "output", f"{describe_type(before)} -> {describe_type(after)}"
                               if describe_type(before) != describe_type(after) else "the output schema changed"))
    return found
