"""Reports against their model (elf_async.report.model): the JSON a command wrote has exactly the
fields the model declares, each of the declared type."""

from __future__ import annotations

from typing import Any, get_args, get_origin, is_typeddict

from elf_async.report.model import fields_of, non_null

_SCALARS = (str, int, float, bool)


def mismatches(value: object, hint: Any, path: str = "report") -> list[str]:
    """Where `value` (parsed JSON) departs from the model type `hint`, one line each."""
    if hint is Any:
        return []
    if non_null(hint) is not hint:  # T | None
        if value is None:
            return []
        hint = non_null(hint)
    if is_typeddict(hint):
        if not isinstance(value, dict):
            return [f"{path}: {value!r} is not an object"]
        fields = {f.name: f for f in fields_of(hint)}
        found = [f"{path}.{name}: not in the model" for name in value if name not in fields]
        for name, field in fields.items():
            if name in value:
                found += mismatches(value[name], field.type, f"{path}.{name}")
            elif field.required:
                found.append(f"{path}.{name}: missing")
        return found
    origin = get_origin(hint)
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: {value!r} is not a list"]
        (item,) = get_args(hint)
        return [line for i, v in enumerate(value) for line in mismatches(v, item, f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: {value!r} is not an object"]
        _, item = get_args(hint)
        return [line for k, v in value.items() for line in mismatches(v, item, f"{path}.{k}")]
    if hint not in _SCALARS:
        raise TypeError(f"{path}: the model uses {hint!r}, which this check does not know")
    # JSON has one kind of number: an int is a valid float, a bool is not an int.
    ok = isinstance(value, hint) and (hint is bool or not isinstance(value, bool))
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    return [] if ok else [f"{path}: {value!r} is not {hint.__name__}"]


def assert_conforms(report: object, model: Any) -> None:
    found = mismatches(report, model)
    assert not found, "the report departs from its model:\n" + "\n".join(found)
