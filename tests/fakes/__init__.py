"""Local fakes of outside services (GitHub, Telegram, ...): ASGI apps served on 127.0.0.1 by the tests."""
