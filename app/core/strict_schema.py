"""OpenAPI for input Structs that says what the decoder enforces.

- ``additionalProperties: false`` for Structs declared ``forbid_unknown_fields=True``: every input
  Struct refuses unknown fields (a 400 naming them), but Litestar's own Struct plugin left the
  keyword out, so the published schema claimed that any extra property was acceptable.
- Numeric bounds equal to zero: Litestar copies ``ge``/``le``/``gt``/``lt`` onto an optional field's
  schema only when they are truthy, so ``position: int | None`` with ``ge=0`` was documented without
  its ``minimum``.

Register it in ``Litestar(plugins=[...])``: it takes precedence over the built-in Struct plugin (a
subclass of it; Litestar 2 does not export that class publicly).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.openapi.spec import Schema

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.typing import FieldDefinition

_BOUNDS = {"ge": "minimum", "le": "maximum", "gt": "exclusive_minimum", "lt": "exclusive_maximum"}


def _numeric_constraints(field_type: msgspec.inspect.Type) -> msgspec.inspect.Type | None:
    """The int/float type of a field typed ``N`` or ``N | None`` (the one carrying ge/le...)."""
    if isinstance(field_type, msgspec.inspect.Metadata):
        field_type = field_type.type
    if isinstance(field_type, msgspec.inspect.UnionType):
        arms = [arm for arm in field_type.types if not isinstance(arm, msgspec.inspect.NoneType)]
        if len(arms) != 1:
            return None
        field_type = arms[0]
        if isinstance(field_type, msgspec.inspect.Metadata):
            field_type = field_type.type
    if isinstance(field_type, msgspec.inspect.IntType | msgspec.inspect.FloatType):
        return field_type
    return None


class StrictStructSchemaPlugin(StructSchemaPlugin):
    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        struct_type = field_definition.type_
        if struct_type.__struct_config__.forbid_unknown_fields:
            schema.additional_properties = False
        info = msgspec.inspect.type_info(struct_type)
        assert isinstance(info, msgspec.inspect.StructType)
        for field in info.fields:
            numeric = _numeric_constraints(field.type)
            prop = (schema.properties or {}).get(field.encode_name)
            if numeric is None or not isinstance(prop, Schema):
                continue
            for constraint, keyword in _BOUNDS.items():
                if getattr(numeric, constraint) == 0 and getattr(prop, keyword) is None:
                    setattr(prop, keyword, 0)
        return schema


__all__ = ["StrictStructSchemaPlugin"]
