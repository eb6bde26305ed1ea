"""A secret handed to a log call by mistake is masked by the app's own log pipeline, whatever the
field is called and however deep it sits: any field whose name contains password, secret, token,
authorization, cookie, session (any case), at the top of the event or in a mapping it holds.
Before, only six exact top-level names were masked: ``current_password``, ``new_password``,
``cookie``, ``saq_session``, a nested ``refresh_token`` were written as they were."""

from __future__ import annotations

from typing import Any

import structlog
from psycopg import AsyncConnection

from app.core.scrub import MASK
from tests.factories import PASSWORD, Client, bearer, captured_logs, create_user, login

SECRET = "hunter2-do-not-log-me"


async def test_fields_named_like_secrets_are_masked_at_any_depth(api: Client) -> None:
    """``api``: the app has configured logging; its own formatter renders what is captured."""
    nested: dict[str, Any] = {
        "refresh_token": SECRET,
        "headers": {"Cookie": SECRET, "X-Api-Key": SECRET, "accept": "text/html"},
        "items": [{"new_password": SECRET, "kept": 1}],
    }
    with captured_logs() as logs:
        structlog.get_logger("app.accounts").warning(
            "careless_call",
            current_password=SECRET,
            new_password=SECRET,
            cookie=SECRET,
            saq_session=SECRET,
            Authorization=SECRET,
            client_secret=SECRET,
            body=nested,
            user_id=7,
        )
    assert SECRET not in logs.text, logs.text
    (line,) = logs.events("careless_call")
    for key in (
        "current_password",
        "new_password",
        "cookie",
        "saq_session",
        "Authorization",
        "client_secret",
    ):
        assert line[key] == MASK, line
    assert line["body"] == {
        "refresh_token": MASK,
        "headers": {"Cookie": MASK, "X-Api-Key": MASK, "accept": "text/html"},
        "items": [{"new_password": MASK, "kept": 1}],
    }
    assert line["user_id"] == 7
    assert nested["refresh_token"] == SECRET, "the logged object itself is never changed"


async def test_secret_shaped_strings_are_masked_inside_nested_values(api: Client) -> None:
    """A secret recognised by its shape (a URL's password, a bearer value, a JWT) is masked in a
    mapping, list or tuple as in a top-level field; before, only top-level strings were scrubbed."""
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI3In0.c2lnbmF0dXJl"
    with captured_logs() as logs:
        structlog.get_logger("app.core").warning(
            "careless_nested_call",
            target={"dsn": f"postgresql://app:{SECRET}@db.internal/app", "attempt": 2},
            tried=[f"Bearer {SECRET}", "plain words"],
            pair=("ok", jwt),
        )
    assert SECRET not in logs.text and jwt not in logs.text, logs.text
    (line,) = logs.events("careless_nested_call")
    assert line["target"] == {"dsn": f"postgresql://app:{MASK}@db.internal/app", "attempt": 2}
    assert line["tried"] == [f"Bearer {MASK}", "plain words"]
    assert line["pair"] == ["ok", MASK]


async def test_fields_that_only_count_or_name_sessions_and_tokens_are_kept(
    api: Client, db: AsyncConnection[Any], password_hash: str
) -> None:
    """What the app logs under such names that is no secret stays readable: a password change's
    ``sessions_revoked`` (the GitHub client's ``token_id``, a fingerprint, is checked in
    test_github_client.py)."""
    user = await create_user(db, password_hash)
    session = await login(api, user.email)
    await login(api, user.email)
    with captured_logs() as logs:
        answer = await api.patch(
            "/api/auth/me",
            json={"current_password": PASSWORD, "new_password": "a brand new passphrase 7"},
            headers=bearer(session["access_token"]),
        )
        assert answer.status_code == 200, answer.text
        structlog.get_logger("app.github").info("kept", token_id="fp-1234", sessions_ended=2)
    (changed,) = logs.events("password_changed")
    assert changed["sessions_revoked"] == 1, changed
    (kept,) = logs.events("kept")
    assert (kept["token_id"], kept["sessions_ended"]) == ("fp-1234", 2)


async def test_a_logged_database_error_keeps_its_message_not_the_row_it_quotes(
    api: Client, db: AsyncConnection[Any]
) -> None:
    """A constraint's violation is logged with its traceback (the unexpected-error handler, a failed
    job): PostgreSQL's DETAIL line quotes the whole row, e-mail and password hash included, which no
    secret pattern masks. Only the primary message is written, as monitoring keeps it; the chain's
    other exceptions and the frames stay."""
    row_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
    with captured_logs() as logs:
        try:
            try:
                await db.execute(
                    "insert into users (email, display_name, password_hash) values (%s, %s, %s)",
                    ("Victim@Example.com", "Victim Person", row_hash),
                )
            except Exception as exc:
                raise RuntimeError("registration failed") from exc
        except RuntimeError:
            structlog.get_logger("app.errors").exception("unhandled_error", path="/api/auth/register")
    assert "Victim" not in logs.text and row_hash not in logs.text and "DETAIL" not in logs.text, logs.text
    (line,) = logs.events("unhandled_error")
    told = line["exception"]
    assert 'violates check constraint "users_email_check"' in told, told
    assert "CheckViolation" in told and "RuntimeError: registration failed" in told, told
    assert "test_a_logged_database_error_keeps_its_message_not_the_row_it_quotes" in told, "the frames stay"
