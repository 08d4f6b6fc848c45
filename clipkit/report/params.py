"""Validation of notebook parameters: papermill only warns about unknown names; clipkit fails clearly."""
from __future__ import annotations


def check(namespace: dict, schema: dict[str, type | tuple]) -> dict:
    """Check the UPPER_CASE names of a notebook's namespace against `schema` {NAME: type(s)}.

    Raises ValueError naming any unknown parameter (a typo such as `-p MODLE x`) or any value of
    the wrong type, and returns {NAME: value} for the notebook to use.
    """
    given = {k: v for k, v in namespace.items() if k.isupper() and not k.startswith("_")}
    unknown = sorted(set(given) - set(schema))
    if unknown:
        raise ValueError(f"unknown notebook parameter(s) {unknown}; this notebook takes {sorted(schema)}")
    missing = sorted(set(schema) - set(given))
    if missing:
        raise ValueError(f"missing notebook parameter(s) {missing}: the parameters cell must define them")
    for k, typ in schema.items():
        v = given[k]
        ok = isinstance(v, typ) and not (isinstance(v, bool) and typ in (int, float, (int, float)))
        if not ok:
            want = " or ".join(t.__name__ for t in (typ if isinstance(typ, tuple) else (typ,)))
            raise ValueError(f"notebook parameter {k} must be {want}, got {v!r} ({type(v).__name__})")
    return {k: given[k] for k in schema}
