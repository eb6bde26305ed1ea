"""Uploads in flight, reserved in Valkey against the quotas before their body is read.

Each upload streaming in holds a reservation — its largest possible size (the announced
Content-Length, at most ``FILE_MAX_BYTES``; ``FILE_MAX_BYTES`` when unannounced) and one file — in
two sorted sets, its uploader's and its project's, scored by the deadline of its lease
(``FILE_UPLOAD_LEASE_S``). The quota checks count committed rows plus these reservations, so
concurrent uploads never stage more than the quota and one file, and an uploader has at most
``FILE_UPLOADS_PER_USER`` uploads in flight.

A reservation is released when its upload has failed, or by the recording transaction just before
its commit (still holding the quota locks, so no check counts both the row and the reservation, and
whatever happens to the commit's answer, the row decides); the lease is renewed while
the body keeps arriving, so a reservation of a process killed midway lapses after at most one lease
(expired members are pruned before every count) and never leaks.

An upload ends with its lease: waiting for the next chunk of its body has the lease's deadline
(:attr:`Reservation.deadline`, reckoned from before each renewal was sent, so it never outlasts the
reservation in Valkey), after which the upload is answered 408 ``upload-stalled`` and its temp file
removed. A stalled client therefore never keeps staged bytes once its room may have been given to
another. A renewal that finds its reservation present but lapsed (clocks that disagree) is refused
the same way; one that finds it missing (Valkey restarted without persistence, or failed over)
adds it back: the upload's lease had not run out, Valkey forgot it.

Reservations are added only while the ``LockUploadQuotas`` advisory locks of their uploader and
project are held (``FileService.upload``), so a count read under those locks stays true until the
reservation is added; releases and expiries only ever make room.

Without Valkey, uploads go on as they did before reservations existed (as the rate limits fail open):
nothing is counted in flight, nothing reserved, and the recording transaction's exact check of the
stored files still holds the quotas; only the bound on what concurrent uploads stage is lost meanwhile.
"""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import structlog
from valkey.asyncio import Valkey

from app.core.errors import AppError, TooManyRequestsError, report_dependency_down
from app.core.valkey import VALKEY_DOWN

log = structlog.get_logger("app.files")

# KEYS: the uploader's set, the project's set. ARGV: a member to leave out of the counts ('' for none).
# Prunes lapsed reservations; returns {uploader count, uploader bytes, project count, project bytes}.
_IN_FLIGHT = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local out = {}
for i = 1, 2 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now_ms)
  local n, bytes = 0, 0
  for _, member in ipairs(redis.call('ZRANGE', KEYS[i], 0, -1)) do
    if member ~= ARGV[1] then
      n = n + 1
      bytes = bytes + tonumber(string.match(member, ':(%d+)$'))
    end
  end
  out[#out + 1] = n
  out[#out + 1] = bytes
end
return out
"""

# KEYS: the uploader's set, the project's set. ARGV: member, lease (ms), 1 to add, 0 to renew only.
# Returns 1, or 0 when renewing a reservation whose lease has lapsed (it is then not renewed). A
# reservation missing from the uploader's set is one Valkey lost (restart, failover): added back.
_HOLD = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if ARGV[3] == '0' then
  local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if deadline and tonumber(deadline) <= now_ms then
    return 0
  end
end
local lease = tonumber(ARGV[2])
for i = 1, 2 do
  redis.call('ZADD', KEYS[i], now_ms + lease, ARGV[1])
  redis.call('PEXPIRE', KEYS[i], lease)
end
return 1
"""


class TooManyUploadsError(TooManyRequestsError):
    slug = "too-many-uploads"
    title = "Too many uploads in flight"


class UploadStalledError(AppError):
    status = 408
    slug = "upload-stalled"
    title = "Upload stalled"


class InFlight:
    """Counts and bytes reserved by uploads in flight, per uploader and per project."""

    __slots__ = ("project_bytes", "project_files", "uploader_bytes", "uploader_files")

    def __init__(self, counts: list[Any]) -> None:
        self.uploader_files, self.uploader_bytes, self.project_files, self.project_bytes = (
            int(value) for value in counts
        )


NOTHING_IN_FLIGHT = InFlight([0, 0, 0, 0])
"""What is counted while Valkey cannot be reached (see the module's docstring)."""


class Reservation:
    """One upload's hold on quota; renewed while its body streams, released when it ends."""

    def __init__(self, uploads: UploadReservations, keys: list[str], member: str, *, held_at: float) -> None:
        """``member`` is '' for an upload that reserved nothing (Valkey was unreachable); ``held_at``
        is the event loop's time (``anyio.current_time``) just before the reservation was sent."""
        self._uploads = uploads
        self.keys = keys
        self.member = member
        self._renewed_at = held_at

    @property
    def deadline(self) -> float:
        """When the lease runs out unless renewed (event loop time): the upload ends then."""
        return self._renewed_at + self._uploads.lease_s

    def stalled(self) -> UploadStalledError:
        return UploadStalledError(
            "The body stopped arriving: the upload's lease (FILE_UPLOAD_LEASE_S, "
            f"{self._uploads.lease_s:g} s since its last renewal) ran out and its room was given back. "
            "Send it again."
        )

    async def keep(self) -> bool:
        """Renew the lease when a quarter of it has passed (then True); 408 if it has lapsed meanwhile.

        With Valkey unreachable, the lease is renewed here only (the client is still sending), and in
        Valkey at the next renewal if it is back by then.
        """
        renewing_at = anyio.current_time()
        if renewing_at - self._renewed_at < self._uploads.lease_s / 4:
            return False
        if self.member:
            try:
                held = await self._uploads.hold(keys=self.keys, args=[self.member, self._uploads.lease_ms, 0])
            except VALKEY_DOWN as exc:
                report_dependency_down(exc, "file-uploads")
            else:
                if not held:
                    raise self.stalled()
        self._renewed_at = renewing_at
        return True

    async def hold(self) -> None:
        """Hold the room in Valkey (``UploadReservations.prepare``); unreachable, nothing is held (the
        upload goes on, its member '')."""
        self._renewed_at = anyio.current_time()
        try:
            await self._uploads.hold(keys=self.keys, args=[self.member, self._uploads.lease_ms, 1])
        except VALKEY_DOWN as exc:
            report_dependency_down(exc, "file-uploads")
            self.member = ""

    async def release(self) -> None:
        """Give the room back (also while being cancelled); a failure leaves it to the lease."""
        if not self.member:
            return
        with anyio.move_on_after(5, shield=True):
            try:
                async with self._uploads.valkey.pipeline(transaction=False) as pipe:
                    for key in self.keys:
                        pipe.zrem(key, self.member)
                    await pipe.execute()
            except Exception:
                log.warning("upload_reservation_not_released", member=self.member, exc_info=True)


class UploadReservations:
    def __init__(self, valkey: Valkey, *, per_user: int, lease_s: float) -> None:
        self.valkey = valkey
        self.per_user = per_user
        self.lease_s = lease_s
        self.lease_ms = int(lease_s * 1000)
        self.in_flight_script = valkey.register_script(_IN_FLIGHT)
        self.hold = valkey.register_script(_HOLD)

    @staticmethod
    def keys(user_id: int, project_id: int) -> list[str]:
        return [f"files:uploading:user:{user_id}", f"files:uploading:project:{project_id}"]

    async def in_flight(self, user_id: int, project_id: int, *, leaving_out: str = "") -> InFlight:
        try:
            counts = await self.in_flight_script(keys=self.keys(user_id, project_id), args=[leaving_out])
        except VALKEY_DOWN as exc:
            report_dependency_down(exc, "file-uploads")
            return NOTHING_IN_FLIGHT
        return InFlight(counts)

    def prepare(self, user_id: int, project_id: int, size_bytes: int) -> Reservation:
        """A reservation of ``size_bytes`` and one file, not held yet (``Reservation.hold``). Made first
        and kept by the caller, so that one whose upload is cancelled while Valkey holds it (its client
        gone) is released like any other, not left to its lease."""
        return Reservation(
            self,
            self.keys(user_id, project_id),
            f"{uuid.uuid4().hex}:{size_bytes}",
            held_at=anyio.current_time(),
        )
