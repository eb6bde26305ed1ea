"""``load_settings``: parsing from environment strings, validation and a secret-free repr.

The module runs in a temporary working directory: an unset ``DATA_DIR`` means ``./.data``, where a
development signing key would otherwise be written into the repository.
"""

from __future__ import annotations

import os
import re
import stat
import string
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import msgspec
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from app.config import (
    DEFAULT_ADMIN_PASSWORD,
    DEFAULT_DEMO_PASSWORD,
    MAX_TELEGRAM_CHATS,
    PUBLIC_DEFAULT_SECRET_KEY,
    SECRET_KEY_FILE,
    Settings,
    SettingsError,
    is_loopback_host,
    is_weak_secret_key,
    load_settings,
    read_or_create_secret_key,
)
from app.domains.pageviews.services import retention_first_day

STRONG_SECRET = "k" * 16 + "0123456789ABCDEF"  # 32 characters
PUBLIC_HOSTS = ["0.0.0.0", "::", "192.168.1.10", "10.0.0.5", "example.com", "my-laptop"]  # noqa: S104
LOOPBACK_HOSTS = ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"]
WEAK_KEYS = [
    PUBLIC_DEFAULT_SECRET_KEY,
    "short-secret",
    "x" * 31,
    "a" * 64,
    "abcdefg" * 8,  # seven distinct characters
    "change-me-change-me-change-me-change-me",  # deployrev: a placeholder started in production
    "Q7xL2pV9sK4mN8rT1wY6zB3cD5fG0hJ_CHANGE_ME",
]
PROD_DB = "postgresql://app:db-password-1@db.internal:5432/app"
PROD_VALKEY = "redis://:valkey-password-1@cache.internal:6379/0"


def production(**overrides: str) -> dict[str, str]:
    env = {
        "APP_ENV": "production",
        "SECRET_KEY": STRONG_SECRET,
        "DATABASE_URL": PROD_DB,
        "VALKEY_URL": PROD_VALKEY,
    }
    env.update(overrides)
    return env


@pytest.fixture(scope="module", autouse=True)
def cwd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    before = Path.cwd()
    directory = tmp_path_factory.mktemp("cwd")
    os.chdir(directory)
    yield directory
    os.chdir(before)


def without_key(settings: Settings) -> Settings:
    """Settings to compare: every key is random, so keys never compare equal."""
    return msgspec.structs.replace(settings, secret_key="")


def test_empty_environment_gives_the_struct_defaults() -> None:
    settings = load_settings({})

    assert without_key(settings) == without_key(Settings())
    assert settings.app_env == "development"
    assert settings.port == 8000
    assert settings.database_url is None
    assert settings.valkey_url is None
    assert settings.serve_ready_timeout_s == 60
    assert settings.trusted_proxies == ["127.0.0.1", "::1"]
    assert settings.cors_origins == []


def test_empty_strings_count_as_unset() -> None:
    settings = load_settings({"PORT": "", "DATABASE_URL": "", "LOG_JSON": "", "SECRET_KEY": ""})

    assert without_key(settings) == without_key(Settings())


def test_variables_unrelated_to_settings_are_ignored() -> None:
    assert without_key(load_settings({"HOME": "/root", "port": "1", "PATH": "/bin"})) == without_key(
        Settings()
    )


def test_numbers_are_parsed_from_strings() -> None:
    settings = load_settings(
        {
            "PORT": "9001",
            "WORKERS": "4",
            "DATABASE_TIMEOUT_S": "2.5",
            "VALKEY_TIMEOUT_S": "0.25",
            "STATEMENT_TIMEOUT_MS": "0",
        }
    )

    assert settings.port == 9001
    assert isinstance(settings.port, int)
    assert settings.workers == 4
    assert settings.database_timeout_s == 2.5
    assert settings.valkey_timeout_s == 0.25
    assert settings.statement_timeout_ms == 0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("1", True), ("false", False), ("0", False)],
)
def test_booleans_are_parsed_from_strings(raw: str, expected: bool) -> None:
    settings = load_settings({"LOG_JSON": raw, "WORKER_IN_PROCESS": raw})

    assert settings.log_json is expected
    assert settings.worker_in_process is expected


def test_paths_are_parsed_from_strings() -> None:
    assert load_settings({"DATA_DIR": "/var/lib/app"}).data_dir == Path("/var/lib/app")


def test_lists_are_comma_separated_trimmed_and_blanks_dropped() -> None:
    settings = load_settings(
        {
            "CORS_ORIGINS": " https://a.example , ,https://b.example,",
            "TRUSTED_PROXIES": "10.0.0.0/8,,  192.168.1.1 ",
        }
    )

    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.trusted_proxies == ["10.0.0.0/8", "192.168.1.1"]


def test_a_single_item_list_needs_no_comma() -> None:
    assert load_settings({"CORS_ORIGINS": "https://only.example"}).cors_origins == ["https://only.example"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("PORT", "-1"),
        ("WORKERS", "0"),
        ("DATABASE_TIMEOUT_S", "0"),
        ("DATABASE_TIMEOUT_S", "soon"),
        ("HEALTH_TIMEOUT_S", "0"),
        ("LOG_JSON", "maybe"),
        ("LOG_LEVEL", "TRACE"),
        ("APP_ENV", "staging"),
        ("MAX_BODY_BYTES", "10"),
        ("TELEGRAM_TIMEOUT_S", "26"),  # a delivery would never fit a job
        ("MONITORING_REPORT_TIMEZONE", "Europe/Berln"),  # was: a traceback once the service was built
        ("MONITORING_REPORT_TIMEZONE", "localtime"),
        ("PASSWORD_TIME_COST", "200"),  # 2.7 s a sign-in
        ("PASSWORD_MEMORY_KIB", "100000000000"),  # was: argon2's "does not fit '32-bit unsigned int'"
        ("PASSWORD_PARALLELISM", "100000"),  # was: argon2's "Memory cost is too small"
        ("TRUSTED_PROXIES", "10.0.0.5,10.0.0.1/"),  # was: a crash loop of every granian worker
        ("TRUSTED_PROXIES", "garbage"),
        ("CORS_ORIGINS", "https://app.example.com/"),  # was: CORS silently off (no Origin matches)
        ("CORS_ORIGINS", "https://app.example.com,app2.example.com"),
    ],
)
def test_an_invalid_value_raises_naming_the_environment_variable(name: str, value: str) -> None:
    """The operator set ``HEALTH_TIMEOUT_S``: the message says so, not msgspec's ``$.health_timeout_s``."""
    with pytest.raises(SettingsError) as refused:
        load_settings({name: value})

    assert str(refused.value).startswith(f"invalid configuration: {name}"), str(refused.value)
    assert "$." not in str(refused.value)


def test_a_github_token_with_its_files_newline_is_refused_and_never_shown() -> None:
    """Accepted, it failed every request to GitHub with a log naming ``GITHUB_API_URL``."""
    token = "ghp_" + "x" * 36
    with pytest.raises(SettingsError, match=r"^invalid configuration: GITHUB_TOKEN: ") as refused:
        load_settings({"GITHUB_TOKEN": token + "\n"})
    assert token not in str(refused.value)
    assert load_settings({"GITHUB_TOKEN": token}).github_token == token


def test_an_invalid_secret_is_named_and_its_value_never_shown() -> None:
    token = "123456:not/a-token"
    with pytest.raises(SettingsError, match=r"^invalid configuration: TELEGRAM_BOT_TOKEN: ") as refused:
        load_settings({"TELEGRAM_BOT_TOKEN": token})

    assert token not in str(refused.value)
    assert refused.value.__cause__ is None and refused.value.__suppress_context__


@pytest.mark.parametrize(
    "chats",
    [
        "not-a-chat",  # Telegram: 400 chat not found, for every alert
        "42,@chan",  # a channel username has 5 to 32 characters
        ",".join(str(n) for n in range(1, MAX_TELEGRAM_CHATS + 2)),  # past the cap
    ],
)
def test_telegram_chats_are_ids_or_channel_names_and_bounded(chats: str) -> None:
    with pytest.raises(SettingsError, match=r"^TELEGRAM_CHAT_ID (item|names) ") as refused:
        load_settings({"TELEGRAM_CHAT_ID": chats})
    assert "@channelusername" in str(refused.value) or "30 a second" in str(refused.value)


def test_telegram_chats_take_ids_groups_and_channel_names() -> None:
    chats = ",".join(["4242", "-1001234567890", "@alerts_channel"] + [str(n) for n in range(17)])
    assert len(load_settings({"TELEGRAM_CHAT_ID": chats}).telegram_chat_id) == MAX_TELEGRAM_CHATS


def test_port_bounds_are_inclusive() -> None:
    assert load_settings({"PORT": "0"}).port == 0
    assert load_settings({"PORT": "65535"}).port == 65535


@pytest.mark.parametrize("secret", [None, *WEAK_KEYS])
def test_production_refuses_a_missing_or_weak_secret(secret: str | None) -> None:
    env = production()
    if secret is None:
        del env["SECRET_KEY"]
    else:
        env["SECRET_KEY"] = secret

    with pytest.raises(SettingsError, match="SECRET_KEY"):
        load_settings(env)


@pytest.mark.parametrize("missing", ["DATABASE_URL", "VALKEY_URL"])
def test_production_requires_external_database_and_valkey(missing: str) -> None:
    env = production()
    del env[missing]

    with pytest.raises(SettingsError, match=missing):
        load_settings(env)


def test_production_fully_configured_loads() -> None:
    settings = load_settings(production())

    assert settings.is_production
    assert settings.secret_key == STRONG_SECRET
    assert settings.database_url == PROD_DB
    assert settings.valkey_url == PROD_VALKEY


def test_a_32_character_secret_is_long_enough_in_production() -> None:
    assert len(load_settings(production(SECRET_KEY="s" * 25 + "tuvwxyz")).secret_key) == 32


def test_production_refuses_without_writing_a_key_file(tmp_path: Path) -> None:
    env = production(DATA_DIR=str(tmp_path))
    del env["SECRET_KEY"]

    with pytest.raises(SettingsError, match="SECRET_KEY"):
        load_settings(env)
    assert list(tmp_path.iterdir()) == []


def test_production_on_all_interfaces_with_a_strong_key_loads() -> None:
    assert load_settings(production(HOST="0.0.0.0")).host == "0.0.0.0"  # noqa: S104 - the container


# --- the development signing key ---------------------------------------------------------------


def test_development_without_a_key_generates_one_kept_0600_under_data_dir(tmp_path: Path) -> None:
    settings = load_settings({"DATA_DIR": str(tmp_path)})

    key_file = tmp_path / SECRET_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().strip() == settings.secret_key
    assert not is_weak_secret_key(settings.secret_key)
    assert settings.secret_key != PUBLIC_DEFAULT_SECRET_KEY


def test_the_generated_key_is_reused_by_later_starts(tmp_path: Path) -> None:
    first = load_settings({"DATA_DIR": str(tmp_path)}).secret_key

    assert load_settings({"DATA_DIR": str(tmp_path)}).secret_key == first
    assert load_settings({"DATA_DIR": str(tmp_path), "PORT": "9000"}).secret_key == first


def test_each_data_dir_has_its_own_key(tmp_path: Path) -> None:
    one = load_settings({"DATA_DIR": str(tmp_path / "one")}).secret_key
    two = load_settings({"DATA_DIR": str(tmp_path / "two")}).secret_key

    assert one != two


def test_an_unset_data_dir_keeps_the_key_in_dot_data(cwd: Path) -> None:
    settings = load_settings({})

    assert (cwd / ".data" / SECRET_KEY_FILE).read_text().strip() == settings.secret_key


def test_processes_racing_to_create_the_key_all_get_the_same_one(tmp_path: Path) -> None:
    racers = 16
    start = threading.Barrier(racers)

    def create() -> str:
        start.wait()
        return read_or_create_secret_key(tmp_path / SECRET_KEY_FILE)

    with ThreadPoolExecutor(racers) as pool:
        keys = set(pool.map(lambda _: create(), range(racers)))

    assert len(keys) == 1
    assert [path.name for path in tmp_path.iterdir()] == [SECRET_KEY_FILE], "no temporary file is left"


def test_an_explicit_secret_key_wins_and_writes_no_file(tmp_path: Path) -> None:
    settings = load_settings({"DATA_DIR": str(tmp_path), "SECRET_KEY": STRONG_SECRET})

    assert settings.secret_key == STRONG_SECRET
    assert not (tmp_path / SECRET_KEY_FILE).exists()


def test_a_key_file_readable_by_others_is_made_private(tmp_path: Path) -> None:
    key = load_settings({"DATA_DIR": str(tmp_path)}).secret_key
    (tmp_path / SECRET_KEY_FILE).chmod(0o644)

    assert load_settings({"DATA_DIR": str(tmp_path)}).secret_key == key
    assert stat.S_IMODE((tmp_path / SECRET_KEY_FILE).stat().st_mode) == 0o600


@pytest.mark.parametrize("weak", WEAK_KEYS)
def test_a_weak_key_in_the_file_is_refused(tmp_path: Path, weak: str) -> None:
    (tmp_path / SECRET_KEY_FILE).write_text(weak)

    with pytest.raises(SettingsError, match="weak key"):
        load_settings({"DATA_DIR": str(tmp_path)})


def test_tests_without_data_dir_get_a_random_key_in_memory(cwd: Path) -> None:
    before = set(cwd.rglob("*"))

    one = load_settings({"APP_ENV": "test"}).secret_key
    two = load_settings({"APP_ENV": "test"}).secret_key

    assert one != two
    assert not is_weak_secret_key(one)
    assert set(cwd.rglob("*")) == before, "nothing is written"


def test_tests_with_a_data_dir_share_the_key_file(tmp_path: Path) -> None:
    """Served tests run several granian workers on one DATA_DIR: they must agree on the key."""
    one = load_settings({"APP_ENV": "test", "DATA_DIR": str(tmp_path)}).secret_key

    assert load_settings({"APP_ENV": "test", "DATA_DIR": str(tmp_path)}).secret_key == one


def test_settings_built_directly_get_a_random_key() -> None:
    assert Settings().secret_key != Settings().secret_key
    assert not is_weak_secret_key(Settings().secret_key)


# --- who may listen where ----------------------------------------------------------------------


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_loopback_development_works_with_no_setup(tmp_path: Path, host: str) -> None:
    settings = load_settings({"HOST": host, "DATA_DIR": str(tmp_path)})

    assert settings.admin_password == DEFAULT_ADMIN_PASSWORD
    assert settings.secret_key == (tmp_path / SECRET_KEY_FILE).read_text().strip()


@pytest.mark.parametrize("weak", WEAK_KEYS)
def test_on_loopback_a_weak_explicit_key_is_the_developers_choice(weak: str) -> None:
    assert load_settings({"SECRET_KEY": weak}).secret_key == weak


@pytest.mark.parametrize("host", PUBLIC_HOSTS)
@pytest.mark.parametrize("weak", WEAK_KEYS)
@pytest.mark.parametrize("app_env", ["development", "test", "production"])
def test_a_weak_key_is_refused_on_a_non_loopback_host(host: str, weak: str, app_env: str) -> None:
    env = production() if app_env == "production" else {"APP_ENV": app_env}
    env |= {
        "HOST": host,
        "SECRET_KEY": weak,
        "ADMIN_PASSWORD": "a-real-password",
        "DEMO_PASSWORD": "another-one",
    }

    with pytest.raises(SettingsError, match="SECRET_KEY"):
        load_settings(env)


@pytest.mark.parametrize("host", PUBLIC_HOSTS)
def test_a_non_loopback_host_with_the_public_demo_passwords_is_refused(tmp_path: Path, host: str) -> None:
    with pytest.raises(SettingsError, match=r"Set ADMIN_PASSWORD and DEMO_PASSWORD") as refused:
        load_settings({"HOST": host, "DATA_DIR": str(tmp_path)})

    assert f"HOST={host} is not a loopback address" in str(refused.value)
    assert list(tmp_path.iterdir()) == [], "no key is generated for a refused configuration"


@pytest.mark.parametrize(
    ("passwords", "named"),
    [
        ({"ADMIN_PASSWORD": "a-real-password"}, "Set DEMO_PASSWORD "),
        ({"DEMO_PASSWORD": "a-real-password"}, "Set ADMIN_PASSWORD "),
        ({"ADMIN_PASSWORD": DEFAULT_ADMIN_PASSWORD, "DEMO_PASSWORD": "x-y-z-w-v-u"}, "Set ADMIN_PASSWORD "),
        ({"ADMIN_PASSWORD": "x-y-z-w-v-u", "DEMO_PASSWORD": DEFAULT_DEMO_PASSWORD}, "Set DEMO_PASSWORD "),
    ],
)
def test_the_refusal_names_only_the_passwords_still_at_their_default(
    tmp_path: Path, passwords: dict[str, str], named: str
) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings({"HOST": "0.0.0.0", "DATA_DIR": str(tmp_path), **passwords})  # noqa: S104


def test_a_non_loopback_development_host_with_real_passwords_uses_the_generated_key(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "HOST": "0.0.0.0",  # noqa: S104
            "DATA_DIR": str(tmp_path),
            "ADMIN_PASSWORD": "a-real-password",
            "DEMO_PASSWORD": "another-real-one",
        }
    )

    assert settings.secret_key == (tmp_path / SECRET_KEY_FILE).read_text().strip()


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_loopback_hosts_are_recognised(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", PUBLIC_HOSTS)
def test_other_hosts_count_as_reachable(host: str) -> None:
    assert not is_loopback_host(host)


def test_serve_ready_timeout_is_a_positive_number() -> None:
    assert load_settings({"SERVE_READY_TIMEOUT_S": "2.5"}).serve_ready_timeout_s == 2.5
    with pytest.raises(SettingsError, match="SERVE_READY_TIMEOUT_S"):
        load_settings({"SERVE_READY_TIMEOUT_S": "0"})


def test_pool_min_above_max_raises() -> None:
    with pytest.raises(SettingsError, match="DATABASE_POOL_MIN"):
        load_settings({"DATABASE_POOL_MIN": "11", "DATABASE_POOL_MAX": "10"})


def test_pool_min_equal_to_max_is_allowed() -> None:
    settings = load_settings({"DATABASE_POOL_MIN": "10", "DATABASE_POOL_MAX": "10"})

    assert (settings.database_pool_min, settings.database_pool_max) == (10, 10)


def test_reports_computed_at_once_stay_below_the_pool() -> None:
    assert load_settings({}).report_loads_at_once == 5
    assert load_settings({"DATABASE_POOL_MAX": "3"}).report_loads_at_once == 1
    assert load_settings({"REPORT_LOADS_MAX": "7", "DATABASE_POOL_MAX": "8"}).report_loads_at_once == 7
    with pytest.raises(SettingsError, match=r"REPORT_LOADS_MAX \(8\) must be below DATABASE_POOL_MAX \(8\)"):
        load_settings({"REPORT_LOADS_MAX": "8", "DATABASE_POOL_MAX": "8"})


def test_repr_masks_secret_and_url_passwords_but_keeps_the_rest() -> None:
    text = repr(load_settings(production()))

    assert STRONG_SECRET not in text
    assert "db-password-1" not in text
    assert "valkey-password-1" not in text
    assert "secret_key='***'" in text
    assert "postgresql://app:***@db.internal:5432/app" in text
    assert "cache.internal:6379/0" in text
    assert "app_env='production'" in text


def test_repr_leaves_urls_without_credentials_alone() -> None:
    url = "postgresql://db.internal:5432/app"

    assert f"database_url={url!r}" in repr(load_settings({"DATABASE_URL": url}))


_SAFE_TEXT = string.ascii_letters + string.digits
_PLACEHOLDER_SECRET = "PLACEHOLDER" + "P" * 29
_PLACEHOLDER_PASSWORD = "Q" * 12


def _settings_with(secret: str, password: str) -> Settings:
    return load_settings(
        production(
            SECRET_KEY=secret,
            DATABASE_URL=f"postgresql://app:{password}@db.internal:5432/app",
            VALKEY_URL=f"redis://default:{password}@cache.internal:6379/0",
        )
    )


@given(
    secret=st.text(alphabet=_SAFE_TEXT, min_size=32, max_size=80),
    password=st.text(alphabet=_SAFE_TEXT, min_size=8, max_size=40),
)
def test_repr_never_contains_the_secret_or_the_database_password(secret: str, password: str) -> None:
    # A value that happens to spell out other repr text (e.g. "developm") is not a leak.
    baseline = repr(_settings_with(_PLACEHOLDER_SECRET, _PLACEHOLDER_PASSWORD))
    assume(secret not in baseline and password not in baseline)
    assume(not is_weak_secret_key(secret))  # production refuses one repeated character

    settings = _settings_with(secret, password)
    text = repr(settings)

    assert settings.secret_key == secret
    assert secret not in text
    assert password not in text


def test_a_zero_login_delay_is_refused_it_would_switch_the_account_throttle_off(tmp_path: Path) -> None:
    """With ``LOGIN_MAX_DELAY_S=0`` no attempt waits for or is refused by the account's schedule: any
    number of networks could guess one account's password unpaced (a review's finding)."""
    env = {"LOGIN_MAX_DELAY_S": "0", "DATA_DIR": str(tmp_path), "SECRET_KEY": "k" * 16 + "0123456789ABCDEF"}
    with pytest.raises(SettingsError, match=r"LOGIN_MAX_DELAY_S"):
        load_settings(env)
    assert load_settings({**env, "LOGIN_MAX_DELAY_S": "1"}).login_max_delay_s == 1


DURATION = re.compile(r"_(s|ms|days)$")


def test_every_duration_setting_has_an_upper_bound() -> None:
    """``ANALYTICS_RETENTION_DAYS=1000000`` loaded, then every partition run and rollup purge raised
    ``OverflowError`` (``today - timedelta(days=...)``) and nothing expired again; an unbounded token
    lifetime made every sign-in raise the same way. A setting read as a duration is a number (an
    optional one, or any other type, would slip past the bound check below), and bounded."""
    durations = [
        field
        for field in msgspec.inspect.type_info(Settings).fields  # type: ignore[union-attr]
        if DURATION.search(field.name)
    ]
    assert durations, "the settings name their durations _s, _ms or _days"
    not_numbers = [
        field.name
        for field in durations
        if not isinstance(field.type, msgspec.inspect.IntType | msgspec.inspect.FloatType)
    ]
    assert not_numbers == []
    unbounded = [field.name for field in durations if field.type.le is None and field.type.lt is None]  # type: ignore[attr-defined]
    assert unbounded == []


@pytest.mark.parametrize("name", ["ANALYTICS_RETENTION_DAYS", "OUTBOX_RETENTION_DAYS", "REFRESH_TOKEN_TTL_S"])
def test_a_duration_past_its_bound_is_refused_naming_the_variable(name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings({"SECRET_KEY": STRONG_SECRET, name: "1000000000"})


def test_the_longest_retention_still_names_a_day() -> None:
    longest = load_settings({"SECRET_KEY": STRONG_SECRET, "ANALYTICS_RETENTION_DAYS": "3660"})
    assert retention_first_day(date(2026, 12, 5), longest.analytics_retention_days) == date(2016, 11, 27)


def test_snapshots_must_outlive_the_history_users_can_ask_for() -> None:
    """A snapshot retention of 30 days deleted the history up to GITHUB_HISTORY_MAX_DAYS serves."""
    environ = {"SECRET_KEY": STRONG_SECRET, "GITHUB_HISTORY_MAX_DAYS": "366"}
    for retention in ("30", "366"):
        with pytest.raises(SettingsError, match="GITHUB_SNAPSHOT_RETENTION_DAYS"):
            load_settings({**environ, "GITHUB_SNAPSHOT_RETENTION_DAYS": retention})
    assert (
        load_settings({**environ, "GITHUB_SNAPSHOT_RETENTION_DAYS": "367"}).github_snapshot_retention_days
        == 367
    )


@pytest.mark.parametrize("secret", ["x", " ", "k" * 40, "short-but-not-empty", "whsec_" + "a1" * 16 + "\n"])
def test_a_weak_payment_webhook_secret_is_refused_in_every_environment(secret: str) -> None:
    """A one-character secret (or a space) turned the webhook on: anyone could sign a payment."""
    for env in ("development", "production"):
        production = {"SECRET_KEY": "s" * 20 + "0123456789abcdefghijklmnopqrstuvwxyz-_" * 2, "APP_ENV": env}
        urls = {"DATABASE_URL": "postgresql://db/app", "VALKEY_URL": "redis://valkey:6379/0"}
        with pytest.raises(SettingsError, match="PAYMENT_WEBHOOK_SECRET") as refused:
            load_settings({**production, **urls, "PAYMENT_WEBHOOK_SECRET": secret})
        assert secret.strip() not in str(refused.value) or not secret.strip()


def test_a_providers_webhook_secret_is_accepted() -> None:
    secret = "whsec_" + "Zx9" * 11
    assert load_settings({"PAYMENT_WEBHOOK_SECRET": secret}).payment_webhook_secret == secret


@pytest.mark.parametrize(
    ("currency", "accepted"), [("EUR", True), ("USD", True), ("JPY", False), ("KWD", False)]
)
def test_only_a_currency_with_two_decimal_places_is_accepted(currency: str, accepted: bool) -> None:
    """Prices, totals and the webhook's amounts have two decimals: with KWD a provider's 1.234 was
    refused (422) on every redelivery and the order expired unpaid."""
    if accepted:
        assert load_settings({"CURRENCY": currency}).currency == currency
        return
    with pytest.raises(SettingsError, match=f"CURRENCY {currency} does not have two decimal places"):
        load_settings({"CURRENCY": currency})


@pytest.mark.parametrize("zone", ["Europe/Berlin", "UTC", "CET"])
def test_a_report_zone_the_tz_database_knows_is_taken_as_written(zone: str) -> None:
    """CET and its kind are refused for sites (PostgreSQL reads them as fixed offsets); the report
    computes its times in Python only, so they stay usable there."""
    assert load_settings({"MONITORING_REPORT_TIMEZONE": zone}).monitoring_report_timezone == zone
