"""Bearer authentication: puts the verified caller (or None) in ``scope["user"]``.

Authentication is optional here and authorization is the guards' job: a request without a token
is anonymous (public routes work), a request with a bad token is a 401 on every route.
"""

from __future__ import annotations

from litestar.types import ASGIApp, Receive, Scope, Send

from app.domains.accounts.services import AccountService


class AuthenticationMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            user = None
            for name, value in scope["headers"]:
                if name == b"authorization":
                    scheme, _, token = value.decode("latin-1").partition(" ")
                    if scheme.lower() == "bearer" and token.strip():
                        accounts: AccountService = scope["app"].state.accounts
                        user = await accounts.authenticate(token.strip())
                    break
            scope["user"] = user
        await self.app(scope, receive, send)
