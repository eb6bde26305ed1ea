"""OpenAPI for input Structs that says what the decoder enforces.

- ``additionalProperties: false`` for Structs declared ``forbid_unknown_fields=True``: every input
  Struct refuses unknown fields (a 400 naming them), but Litestar's own Struct plugin left the
  keyword out, so the published schema claimed that any extra property was acceptable.
- Numeric bounds equal to zero: Litestar copies ``ge``/``le``/``gt``/``lt`` onto an optional field's
  schema only when they are truthy, so ``position: int | None`` with ``ge=0`` was documented without
  its ``minimum``.
- Bounds of list items: Litestar drops them, so ``ids: list[Id]`` was documented as any integers.
- Defaults of enum-typed fields stay on the field: Litestar wrote the first such default it met into
  the enum's shared component (``TaskStatus`` got ``default: todo``, ``TimeZone`` ``UTC``), so every
  use of the type inherited it: Swagger UI filled the task list's ``status``/``priority`` filters and
  every report's ``tz`` with them, and sent them. The component loses it, and the field documents it
  as ``allOf: [$ref], default``.
- An input Struct may give its example body (``openapi_example: ClassVar[dict]``): Swagger UI then
  fills "Try it out" with it instead of a value for every property. A PATCH body filled so (every
  optional field, ``archived: true``, ``role: admin``) changed all of them when run unedited; the
  changes give ``{}``, which changes nothing. Each is decoded as its Struct when the schema is built.

Register it in ``Litestar(plugins=[...])``: it takes precedence over the built-in Struct plugin (a
subclass of it; Litestar 2 does not export that class publicly).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.openapi.spec import Reference, Schema

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.typing import FieldDefinition

_BOUNDS = {"ge": "minimum", "le": "maximum", "gt": "exclusive_minimum", "lt": "exclusive_maximum"}


def _without_none(field_type: msgspec.inspect.Type) -> msgspec.inspect.Type | None:
    """``T`` of a field typed ``T`` or ``T | None`` (metadata unwrapped); None for other unions."""
    if isinstance(field_type, msgspec.inspect.Metadata):
        field_type = field_type.type
    if isinstance(field_type, msgspec.inspect.UnionType):
        arms = [arm for arm in field_type.types if not isinstance(arm, msgspec.inspect.NoneType)]
        if len(arms) != 1:
            return None
        field_type = arms[0]
        if isinstance(field_type, msgspec.inspect.Metadata):
            field_type = field_type.type
    return field_type


def _numeric(field_type: msgspec.inspect.Type | None) -> msgspec.inspect.Type | None:
    if isinstance(field_type, msgspec.inspect.Metadata):
        field_type = field_type.type
    return field_type if isinstance(field_type, msgspec.inspect.IntType | msgspec.inspect.FloatType) else None


def _copy_bounds(numeric: msgspec.inspect.Type, prop: Schema, *, zero_only: bool) -> None:
    for constraint, keyword in _BOUNDS.items():
        value = getattr(numeric, constraint)
        if value is not None and (value == 0 or not zero_only) and getattr(prop, keyword) is None:
            setattr(prop, keyword, value)


class StrictStructSchemaPlugin(StructSchemaPlugin):
    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        struct_type = field_definition.type_
        if struct_type.__struct_config__.forbid_unknown_fields:
            schema.additional_properties = False
        if (example := getattr(struct_type, "openapi_example", None)) is not None:
            msgspec.convert(example, struct_type)  # an example the API would refuse fails the start
            schema.examples = [example]
        info = msgspec.inspect.type_info(struct_type)
        assert isinstance(info, msgspec.inspect.StructType)
        for field in info.fields:
            self._keep_enum_default_on_the_field(schema, field, schema_creator)
            prop = (schema.properties or {}).get(field.encode_name)
            base = _without_none(field.type)
            if not isinstance(prop, Schema) or base is None:
                continue
            numeric = _numeric(base)
            if numeric is not None:
                _copy_bounds(numeric, prop, zero_only=True)
            elif isinstance(base, msgspec.inspect.ListType | msgspec.inspect.SetType):
                item = _numeric(base.item_type)
                for schema_of_list in [prop, *(prop.one_of or [])]:
                    items = getattr(schema_of_list, "items", None)
                    if item is not None and isinstance(items, Schema):
                        _copy_bounds(item, items, zero_only=False)
        return schema

    @staticmethod
    def _keep_enum_default_on_the_field(
        schema: Schema, field: msgspec.inspect.Field, schema_creator: SchemaCreator
    ) -> None:
        """Take a default out of the shared component of an enum-typed ``field`` (a type has none), and
        give it to ``field``'s property when the field has one (see the module's docstring)."""
        properties = schema.properties or {}
        prop = properties.get(field.encode_name)
        references = [prop] if isinstance(prop, Reference) else []
        if isinstance(prop, Schema):
            references = [arm for arm in prop.one_of or [] if isinstance(arm, Reference)]
        for reference in references:
            shared = schema_creator.schema_registry.from_reference(reference).schema
            if shared.enum is None or shared.default is None:
                continue
            shared.default = None
            default = field.default
            if default is not msgspec.NODEFAULT and default is not None and isinstance(prop, Reference):
                properties[field.encode_name] = Schema(all_of=[prop], default=msgspec.to_builtins(default))


__all__ = ["StrictStructSchemaPlugin"]
