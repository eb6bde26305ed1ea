"""Wire shapes of the accounts API. No shape here ever carries a password hash."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar

import msgspec

from app.core.types import OneLine, Text, whole
from app.core.wire import from_row
from app.db.models import User, UserRole

Email = Annotated[
    str,
    msgspec.Meta(
        min_length=3,
        max_length=320,
        pattern=whole(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
        examples=["ana@example.com"],
        description="ASCII address (lower-casing never changes its length)",
    ),
]
NewPassword = Annotated[
    str,
    msgspec.Meta(
        min_length=10,
        max_length=256,
        examples=["a-passphrase-only-you-know"],
        description="10-256 characters (else a 400 naming the field), at least 5 different ones, no "
        "control character (U+0000 to U+001F, DEL), and in production not a public default (the demo "
        "seed's); else 422 `weak-password` (also when its NFKC form, which is hashed, is outside 10-256)",
    ),
]
AnyPassword = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
DisplayName = Annotated[str, OneLine, msgspec.Meta(min_length=1, max_length=100, examples=["Ana Lima"])]


class RegisterIn(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: NewPassword
    display_name: DisplayName


class RegistrationAccepted(msgspec.Struct, frozen=True):
    """The same answer whether or not the email already had an account."""

    status: str = "accepted"
    detail: str = (
        "If this email had no account, it has one now: sign in with it and the password you chose. "
        "If it already had one, nothing was changed."
    )


class LoginIn(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: AnyPassword


class DashboardSignInForm(msgspec.Struct, forbid_unknown_fields=True):
    """The dashboard's sign-in form (``application/x-www-form-urlencoded``). Any email and password
    within the limits are checked (a malformed one is refused like a wrong one: 401 and the page)."""

    email: Annotated[str, Text, msgspec.Meta(max_length=320)] = ""
    password: Annotated[str, Text, msgspec.Meta(max_length=256)] = ""


class RefreshIn(msgspec.Struct, forbid_unknown_fields=True):
    refresh_token: Annotated[str, msgspec.Meta(min_length=16, max_length=200)]


class UpdateMeIn(msgspec.Struct, forbid_unknown_fields=True):
    openapi_example: ClassVar[dict[str, object]] = {}  # unedited, "Try it out" changes nothing

    display_name: DisplayName | msgspec.UnsetType = msgspec.UNSET
    new_password: NewPassword | msgspec.UnsetType = msgspec.UNSET
    current_password: AnyPassword | msgspec.UnsetType = msgspec.UNSET


class EraseMeIn(msgspec.Struct, forbid_unknown_fields=True):
    """The caller's password, to erase their own account."""

    current_password: AnyPassword


class AdminUserPatch(msgspec.Struct, forbid_unknown_fields=True):
    openapi_example: ClassVar[dict[str, object]] = {}  # unedited, "Try it out" changes nothing

    role: UserRole | msgspec.UnsetType = msgspec.UNSET
    is_active: bool | msgspec.UnsetType = msgspec.UNSET


class UserOut(msgspec.Struct, frozen=True):
    id: int
    email: str
    display_name: str
    role: UserRole
    is_active: bool
    created_at: datetime
    updated_at: datetime
    erased_at: datetime | None = None
    """When the account was erased (its address, name and password replaced); null: it was not."""

    @classmethod
    def from_row(cls, user: User) -> UserOut:
        return from_row(cls, user)


class TokenPair(msgspec.Struct, frozen=True):
    access_token: str
    expires_in: int
    refresh_token: str
    refresh_expires_in: int
    user: UserOut
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type, not a secret


class UserCursor(msgspec.Struct, frozen=True):
    after_id: Annotated[int, msgspec.Meta(ge=0)]
