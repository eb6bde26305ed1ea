"""``struct_field_errors``: every bad field of a decoded body, not only the first."""

from __future__ import annotations

from typing import Annotated

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.core.types import NonBlank
from app.core.validation import struct_field_errors


class Address(msgspec.Struct):
    city: Annotated[str, msgspec.Meta(min_length=1)]
    postcode: str


class Order(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=20)]
    quantity: Annotated[int, msgspec.Meta(ge=1)]
    address: Address
    note: str | None = None
    tags: list[str] = msgspec.field(default_factory=list)
    unit_price: float = msgspec.field(default=0.0, name="unitPrice")


class Lenient(msgspec.Struct):
    count: int
    label: str = ""


VALID = {"name": "widget", "quantity": 2, "address": {"city": "Oslo", "postcode": "0150"}}


def fields_of(errors: list[tuple[str, str]]) -> list[str]:
    return [field for field, _ in errors]


def test_a_valid_value_has_no_errors() -> None:
    assert struct_field_errors(Order, VALID) == []


def test_a_valid_value_with_every_optional_field_has_no_errors() -> None:
    value = {**VALID, "note": None, "tags": ["a", "b"], "unitPrice": 9.5}

    assert struct_field_errors(Order, value) == []


def test_one_bad_field_is_named_with_msgspecs_message_without_location() -> None:
    errors = struct_field_errors(Order, {**VALID, "quantity": "two"})

    assert errors == [("quantity", "Expected `int`, got `str`")]


def test_every_bad_field_is_listed_at_once() -> None:
    value = {**VALID, "name": "", "quantity": 0, "tags": "not-a-list", "unitPrice": "free"}

    errors = struct_field_errors(Order, value)

    assert sorted(fields_of(errors)) == ["name", "quantity", "tags", "unitPrice"]
    messages = dict(errors)
    assert "length >= 1" in messages["name"]
    assert ">= 1" in messages["quantity"]
    assert all(" - at `$" not in message for message in messages.values())


def test_constraints_from_annotated_metadata_are_checked() -> None:
    errors = struct_field_errors(Order, {**VALID, "name": "x" * 21})

    assert fields_of(errors) == ["name"]
    assert "length <= 20" in errors[0][1]


def test_missing_required_fields_are_each_reported() -> None:
    errors = struct_field_errors(Order, {})

    assert sorted(errors) == [
        ("address", "Field is required"),
        ("name", "Field is required"),
        ("quantity", "Field is required"),
    ]


def test_missing_optional_fields_are_not_errors() -> None:
    assert struct_field_errors(Lenient, {"count": 1}) == []


def test_missing_and_invalid_fields_are_reported_together() -> None:
    errors = struct_field_errors(Order, {"name": "", "address": VALID["address"]})

    assert sorted(fields_of(errors)) == ["name", "quantity"]
    assert "length >= 1" in dict(errors)["name"]
    assert dict(errors)["quantity"] == "Field is required"


def test_unknown_fields_are_errors_when_the_struct_forbids_them() -> None:
    errors = struct_field_errors(Order, {**VALID, "colour": "red", "size": 3})

    assert sorted(errors) == [("colour", "Unknown field"), ("size", "Unknown field")]


def test_unknown_fields_are_ignored_when_the_struct_allows_them() -> None:
    assert struct_field_errors(Lenient, {"count": 1, "extra": "whatever"}) == []


def test_fields_are_matched_by_their_encoded_name() -> None:
    # ``unit_price`` is ``unitPrice`` on the wire: the Python name is an unknown field.
    errors = struct_field_errors(Order, {**VALID, "unit_price": 1.0})

    assert errors == [("unit_price", "Unknown field")]
    assert struct_field_errors(Order, {**VALID, "unitPrice": "x"})[0][0] == "unitPrice"


def test_nested_struct_errors_get_dotted_paths() -> None:
    value = {**VALID, "address": {"city": "", "postcode": 150}}

    errors = struct_field_errors(Order, value)

    assert sorted(fields_of(errors)) == ["address.city", "address.postcode"]
    assert dict(errors)["address.postcode"] == "Expected `str`, got `int`"


def test_missing_nested_field_gets_a_dotted_path() -> None:
    errors = struct_field_errors(Order, {**VALID, "address": {"city": "Oslo"}})

    assert errors == [("address.postcode", "Field is required")]


def test_nested_and_top_level_errors_are_reported_together() -> None:
    value = {"name": "", "quantity": 1, "address": {"city": ""}, "bogus": 1}

    errors = struct_field_errors(Order, value)

    assert sorted(fields_of(errors)) == ["address.city", "address.postcode", "bogus", "name"]


def test_a_nested_field_of_the_wrong_shape_is_reported_on_the_field_itself() -> None:
    errors = struct_field_errors(Order, {**VALID, "address": "Oslo"})

    assert fields_of(errors) == ["address"]
    assert "object" in errors[0][1]


def test_a_value_that_is_not_an_object_gives_no_field_errors() -> None:
    assert struct_field_errors(Order, [VALID]) == []
    assert struct_field_errors(Order, "text") == []
    assert struct_field_errors(Order, None) == []


def test_a_type_that_is_not_a_struct_gives_no_errors() -> None:
    assert struct_field_errors(dict, {"a": 1}) == []  # type: ignore[arg-type]


def test_the_prefix_is_prepended_to_every_path() -> None:
    errors = struct_field_errors(Lenient, {"count": "x", "label": 1}, prefix="items.0.")

    assert sorted(fields_of(errors)) == ["items.0.count", "items.0.label"]


def test_errors_match_what_msgspec_itself_rejects() -> None:
    # Whatever struct_field_errors reports for a single bad field, msgspec must also reject.
    value = {**VALID, "quantity": True}

    errors = struct_field_errors(Order, value)

    assert fields_of(errors) == ["quantity"]
    with pytest.raises(msgspec.ValidationError, match=r"\$\.quantity"):
        msgspec.convert(value, Order)


_text = st.text(max_size=30)
_addresses = st.builds(Address, city=st.text(min_size=1, max_size=30), postcode=_text)
_orders = st.builds(
    Order,
    name=st.text(min_size=1, max_size=20),
    quantity=st.integers(min_value=1, max_value=2**62),
    address=_addresses,
    note=st.none() | _text,
    tags=st.lists(_text, max_size=5),
    unit_price=st.floats(allow_nan=False, allow_infinity=False),
)


@given(order=_orders)
def test_any_valid_instance_round_tripped_through_json_has_no_errors(order: Order) -> None:
    decoded = msgspec.json.decode(msgspec.json.encode(order))

    assert isinstance(decoded, dict)
    assert struct_field_errors(Order, decoded) == []


@given(order=_orders, bad=st.sampled_from(["quantity", "name", "address"]))
def test_breaking_one_field_of_a_valid_instance_reports_exactly_that_field(order: Order, bad: str) -> None:
    decoded = msgspec.json.decode(msgspec.json.encode(order))
    decoded[bad] = [] if bad != "quantity" else 0

    assert fields_of(struct_field_errors(Order, decoded)) == [bad]


def test_an_optional_nested_struct_also_gets_dotted_paths() -> None:
    # ``note``-style optionals are common for nested objects too (``billing: Address | None``).
    class Shipment(msgspec.Struct):
        billing: Address | None = None

    errors = struct_field_errors(Shipment, {"billing": {"city": 1}})

    assert sorted(fields_of(errors)) == ["billing.city", "billing.postcode"]


class Described(msgspec.Struct):
    name: Annotated[str, NonBlank, msgspec.Meta(max_length=20, examples=["Website relaunch"])]
    tags: Annotated[list[int], msgspec.Meta(max_length=2, description="At most two")] = []


def test_a_constraint_beside_examples_or_a_description_is_still_worded_and_bounded() -> None:
    """A field whose Meta carried examples or a description (a project's name) answered its broken
    pattern with msgspec's regex, some 4,000 characters of escapes, instead of the rule: msgspec's
    ``type_info`` wraps such a type in ``Metadata``, where the walk read no constraint."""
    errors = struct_field_errors(Described, {"name": "a\u0000b", "tags": [1, "x", "y"]})
    assert errors == [("name", "must contain a visible character and no NUL"), ("tags", errors[1][1])]
    assert "length <= 2" in errors[1][1], "an over-long list is one error, its items not looked at"
