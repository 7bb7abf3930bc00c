"""Invalid params in words: one line per key, with the dotted name, the value received and what
is allowed (a "did you mean" for a misspelt key). Pydantic's errors, rendered for people.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from typing import Any

from pydantic import BaseModel


def model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """Return the pydantic model under ``root`` that owns the key at ``loc`` (for suggestions)."""
    model: Any = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        field = fields.get(part) or model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        nxt = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if nxt is None:
            return None
        model = nxt
    return model


def describe(
    error: dict[str, Any],
    root: type[BaseModel],
    moved: Mapping[str, str],
    skip: Collection[str] = (),
) -> str:
    """One line for one pydantic error: the dotted key, what was received, what is allowed.

    Args:
        error: an item of ``ValidationError.errors()``.
        root: the model of the whole file (for the keys allowed where an unknown one is).
        moved: old dotted key to where it moved.
        skip: location parts that are not keys (a union's tags after a list index).
    """
    raw_loc = error["loc"]
    loc = tuple(
        p
        for i, p in enumerate(raw_loc)
        if not (isinstance(p, str) and "[" in p)
        and not (i and isinstance(raw_loc[i - 1], int) and p in skip)
    )
    dotted = ".".join(str(p) for p in loc) or "<root>"
    received = error.get("input")
    kind = error["type"]
    if kind == "extra_forbidden" and dotted in moved:
        return f"{dotted}: moved to {moved[dotted]}"
    if kind == "extra_forbidden":
        owner = model_at(root, loc)
        allowed = sorted(f.alias or n for n, f in owner.model_fields.items()) if owner else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean {'.'.join([*map(str, loc[:-1]), close[0]])!r}?" if close else ""
        return f"{dotted}: unknown key{hint} (allowed here: {', '.join(allowed)})"
    if kind == "literal_error":
        allowed = error.get("ctx", {}).get("expected", "")
        return f"{dotted}: received {received!r}; allowed: {allowed}"
    if kind == "value_error":  # a validator's own words; a field's gets its key in front
        said = str(error.get("ctx", {}).get("error", error["msg"]))
        return said if not loc or said.startswith(dotted.split(".")[0]) else f"{dotted}: {said}"
    if kind == "union_tag_not_found":
        tag = str(error.get("ctx", {}).get("discriminator", "type")).strip("'")
        return f"{dotted}.{tag}: required key is missing"
    if kind == "missing":
        return f"{dotted}: required key is missing"
    if kind in ("tuple_type", "list_type"):
        return f"{dotted}: received {received!r}; must be a list, e.g. [a, b] or []"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"{dotted}: received {received!r}; must be a mapping of keys to values"
    message = error["msg"].lower().replace("input should be", "must be")
    return f"{dotted}: received {received!r}; {message}"
