"""Validation of notebook parameters: papermill only warns about unknown names; clipkit fails clearly."""
from __future__ import annotations

import difflib


class ParameterError(ValueError):
    """A notebook parameter is unknown, missing or ill-typed. Its message is one line, and in a
    notebook it is the whole traceback (IPython's `_render_traceback_` hook), so that it is the first
    thing a papermill user reads, not the last line of a long kernel traceback."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


def check(namespace: dict, schema: dict[str, type | tuple]) -> dict:
    """Check the UPPER_CASE names of a notebook's namespace against `schema` {NAME: type(s)}.

    Raises ParameterError (a ValueError) naming any unknown parameter with the closest known one (a
    typo such as `-p MODLE x`: did you mean 'MODEL'?), a missing one, or a value of the wrong type;
    returns {NAME: value} for the notebook to use.
    """
    given = {k: v for k, v in namespace.items() if k.isupper() and not k.startswith("_")}
    unknown = sorted(set(given) - set(schema))
    if unknown:
        hints = [f"{k!r} -> {close[0]!r}" for k in unknown
                 if (close := difflib.get_close_matches(k, list(schema), n=1))]
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        raise ParameterError(f"unknown notebook parameter(s) {unknown}{hint}; this notebook takes "
                             f"{sorted(schema)} (papermill -p NAME VALUE, clipkit report --param NAME=VALUE)")
    missing = sorted(set(schema) - set(given))
    if missing:
        raise ParameterError(f"missing notebook parameter(s) {missing}: the parameters cell must define them")
    for k, typ in schema.items():
        v = given[k]
        ok = isinstance(v, typ) and not (isinstance(v, bool) and typ in (int, float, (int, float)))
        if not ok:
            want = " or ".join(t.__name__ for t in (typ if isinstance(typ, tuple) else (typ,)))
            raise ParameterError(f"notebook parameter {k} must be {want}, got {v!r} ({type(v).__name__})")
    return {k: given[k] for k in schema}
