"""Pass-through columns: one Arrow type per input field, fixed for the whole corpus.

Later stages read every shard of a store as one table (polars ``scan_parquet`` over the shards), which needs the
same schema in every shard. Types inferred shard by shard would differ (a field null throughout one shard, ints in
one and floats in the next), so the types are inferred once over the whole input, before any shard is written:
ints and floats widen to float, null takes the other type, structs merge their fields; a field whose values
cannot share one type (strings and numbers, say) is stored as a string (JSON for non-string values).
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import pyarrow as pa

from qscope_data.store import FEATURE_COLUMNS

_CHUNK = 4096


class PassthroughColumns:
    """Observe input records (`observe`), then build each shard's pass-through table with the agreed types (`table`)."""

    def __init__(self, exclude: Iterable[str] = ()):
        self.exclude = set(exclude)
        self._types: dict[str, pa.DataType] = {}  # in order of first appearance
        self._as_string: set[str] = set()
        self._pending: list[dict] = []

    # -- inference --------------------------------------------------------------------------------------------
    def observe(self, fields: dict[str, Any]) -> None:
        self._pending.append(fields)
        if len(self._pending) >= _CHUNK:
            self._flush()

    def observe_all(self, rows: Iterable[dict[str, Any]]) -> "PassthroughColumns":
        for row in rows:
            self.observe(row)
        self._flush()
        return self

    def _flush(self) -> None:
        rows, self._pending = self._pending, []
        names: dict[str, None] = {}
        for row in rows:
            for name in row:
                if name not in self.exclude:
                    names.setdefault(name)
        for name in names:
            self._types.setdefault(name, pa.null())
            if name in self._as_string:
                continue
            try:
                chunk_type = pa.array([row.get(name) for row in rows]).type
                merged = pa.unify_schemas([pa.schema([(name, self._types[name])]), pa.schema([(name, chunk_type)])],
                                          promote_options="permissive").field(name).type
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
                self._as_string.add(name)
                merged = pa.string()
            if _unwritable(merged):
                self._as_string.add(name)
                merged = pa.string()
            self._types[name] = merged

    # -- output -----------------------------------------------------------------------------------------------
    @property
    def schema(self) -> pa.Schema:
        self._flush()
        return pa.schema([pa.field(column_name(n), t) for n, t in self._types.items()])

    def table(self, rows: list[dict[str, Any]]) -> pa.Table:
        """Pass-through table for `rows` with the corpus-wide schema (fields never observed are dropped)."""
        self._flush()
        arrays = []
        for name, typ in self._types.items():
            values = [row.get(name) for row in rows]
            if name in self._as_string:
                values = [v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
                          for v in values]
            arrays.append(pa.array(values, type=typ))
        return pa.Table.from_arrays(arrays, schema=self.schema) if arrays else pa.table({})


def column_name(field: str) -> str:
    """Input fields that collide with the store's own columns are stored as ``input_<name>``."""
    return f"input_{field}" if field in FEATURE_COLUMNS else field


def _unwritable(typ: pa.DataType) -> bool:
    """Types Parquet cannot store (a struct with no fields, e.g. from `{}` values)."""
    if pa.types.is_struct(typ):
        return typ.num_fields == 0 or any(_unwritable(typ.field(i).type) for i in range(typ.num_fields))
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        return _unwritable(typ.value_type)
    if pa.types.is_map(typ):
        return _unwritable(typ.item_type)
    return False
