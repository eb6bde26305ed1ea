"""Project files on local disk, written by streaming a multipart request body.

Layout under the root directory (``FILES_DIR``):

- ``tmp/<uuid>.part`` while an upload streams in; never served.
- ``<project_id>/<uuid>`` once its row is being committed; ``project_files.storage_key`` holds the
  relative path. The client's filename is only metadata (Content-Disposition), never a path.

The upload path never holds the body in memory: each chunk of the file part is hashed, counted,
checked for UTF-8 (a text file without another declared charset) and written to the temp file as it
arrives, and the upload is refused (413) as soon as it grows past the limit, without reading the rest
of the body. Every failure — a bad body, a limit, a disconnected
client, a cancelled task — deletes the temp file before the error leaves :meth:`FileStorage.receive`.

Atomicity with the database (driven by ``services.FileService``): temp file → fsync → one
transaction (insert row, emit event, rename temp into place, fsync the directory) → commit; on a
failure up to and including an error answered to COMMIT, the temp or final file is deleted and the
transaction rolls back. Deletion unlinks the file only after the row's deletion has committed.

The one crash window: a process killed after the rename and before the commit completes leaves an
orphan file under ``<project_id>/`` with no row (harmless, invisible to the API). Leftover
``tmp/*.part`` files from a killed process are equally inert. A deleted project's directory is
removed once its deletion commits; the hourly sweep (``FileService.sweep``) removes what a crash
left behind: directories of projects that no longer exist, files whose key has no row, and stale
temp files. A temp file is stale once neither written nor touched for ``FILE_TEMP_MAX_AGE_S`` (at
least twice ``FILE_UPLOAD_LEASE_S``): each renewal of its upload's lease touches it
(:meth:`FileStorage.keep_fresh`), and an upload whose lease runs out ends. Should a staged file
vanish anyway before it is placed, the upload is a 408 ``upload-expired`` and nothing is recorded.

Once COMMIT has been sent, only an error answered by the server proves it failed: when the answer
is lost (the connection drops, the task is cancelled) the file stays, since the row may exist; if it
does not, the file is an orphan the sweep removes after ``ORPHAN_GRACE_S``.

Blocking file I/O runs in worker threads (``anyio.to_thread``) so a slow disk never stalls the event
loop; only the single-syscall cleanup on the error path runs inline, because it must also run
while the task is being cancelled.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import hashlib
import io
import os
import re
import shutil
import time
import unicodedata
import uuid
from collections.abc import AsyncGenerator, Collection
from contextlib import aclosing
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from stat import S_ISREG
from typing import Any, BinaryIO

import anyio
import anyio.to_thread
import structlog
from anyio import AsyncFile
from litestar.file_system import BaseLocalFileSystem, FileSystemAdapter
from litestar.types import PathType
from litestar.types.file_types import FileInfo
from multipart import (
    MultipartError,
    MultipartSegment,
    PushMultipartParser,
    parse_options_header,
)

from app.config import Settings, SettingsError
from app.core.errors import AppError
from app.core.logging import OncePerInterval
from app.core.middleware import MULTIPART_OVERHEAD

log = structlog.get_logger("app.files")


FILE_FIELD = "file"
MAX_FILENAME_CHARS = 255
_STORAGE_KEY = re.compile(r"^[1-9][0-9]*/[0-9a-f]{32}$")
# Control, format (bidi overrides, zero-width), surrogate, unassigned and line/paragraph separators.
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"})
_CHARSET_LABEL = re.compile(r"[A-Za-z0-9._:-]{1,40}")
"""A declared charset worth looking up: a plain token (IANA names such as ``ISO_8859-1:1987`` included)."""
_CHARSETS: dict[str, str] = {
    **{f"iso8859-{n}": f"iso-8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 10, 13, 14, 15, 16)},
    **{f"cp125{n}": f"windows-125{n}" for n in range(9)},
    "ascii": "us-ascii",
    "cp874": "windows-874",
    "tis-620": "windows-874",
    "cp866": "ibm866",
    "koi8-r": "koi8-r",
    "koi8-u": "koi8-u",
    "mac-roman": "macintosh",
    "mac-cyrillic": "x-mac-cyrillic",
    "shift_jis": "shift_jis",
    "cp932": "shift_jis",
    "euc_jp": "euc-jp",
    "iso2022_jp": "iso-2022-jp",
    "euc_kr": "euc-kr",
    "cp949": "euc-kr",
    "gb2312": "gbk",
    "gbk": "gbk",
    "gb18030": "gb18030",
    "big5": "big5",
    "big5hkscs": "big5",
    "utf-16-le": "utf-16le",
    "utf-16-be": "utf-16be",
    "utf-16": "utf-16",
}
"""Python's name of a codec (``codecs.lookup(label).name``) → the name a download states: the WHATWG
Encoding Standard's name for it, the one every browser knows. A client's own spelling is not repeated:
Python accepts many that browsers do not (``latin-1``, ``8859``, ``windows:1252``), and a label they do
not know is the mojibake a charset is kept to prevent. A codec not listed (UTF-7, EBCDIC, ``hz``,
Python's own ``base64`` or ``unicode_escape``) counts as undeclared, as does UTF-8 (checked against the
bytes instead)."""


class InvalidUploadError(AppError):
    status = 400
    slug = "invalid-upload"
    title = "Invalid upload"


class PayloadTooLargeError(AppError):
    status = 413
    slug = "payload-too-large"
    title = "Request body too large"


class UnsupportedFileTypeError(AppError):
    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"


class UploadExpiredError(AppError):
    """The staged file was removed before it could be placed (the sweep judged it stale): the client
    may send it again, nothing was kept."""

    status = 408
    slug = "upload-expired"
    title = "Upload expired"


class StorageFullError(AppError):
    """The file system under ``FILES_DIR`` refused the bytes for lack of room: the upload stored
    nothing (its staged part is removed); retrying helps once an operator made room."""

    status = 507
    slug = "storage-full"
    title = "Insufficient storage"


def _free_bytes(root: Path) -> int:
    """The free bytes of the file system ``root`` is on, or will be: ``FILES_DIR`` is made by the
    first upload (``_Upload``), so it may not exist yet."""
    while not root.exists() and root.parent != root:
        root = root.parent
    return shutil.disk_usage(root).free


NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""The write errors of a file system out of room: the disk or its inodes, a quota, a file too large."""


def _refuse_if_full(exc: OSError, directory: Path) -> None:
    """Raise ``StorageFullError`` (with an error-level line for the operator) for a write refused for
    lack of room; return for any other ``OSError``, which stays an unexpected error."""
    if exc.errno in NO_ROOM:
        log.error("file_storage_full", files_dir=str(directory), error=os.strerror(exc.errno or 0))
        raise StorageFullError(
            "The server has no room left to store files; nothing was stored. Try again later."
        ) from None


@dataclass(frozen=True, slots=True)
class StagedFile:
    """A complete, fsynced upload waiting in ``tmp/`` for its row."""

    path: Path
    filename: str
    content_type: str
    charset: str | None
    """A text file's character encoding (:func:`declared_charset`, or ``utf-8`` when the whole body is
    valid UTF-8); None when unknown or not text."""
    size_bytes: int
    sha256: str


def sanitize_filename(raw: str) -> str:
    """The client's filename made safe for a header and the database.

    Drops any directory part (``/`` or ``\\``), control and invisible format characters, surrounding
    whitespace; keeps at most 255 characters, preserving a short extension.
    """
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = unicodedata.normalize("NFC", name)
    name = "".join(ch for ch in name if unicodedata.category(ch) not in _DROPPED_CATEGORIES).strip()
    if name in {"", ".", ".."}:
        return "file"
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, extension = name.rpartition(".")
        if dot and stem and len(extension) <= 16:
            name = f"{stem[: MAX_FILENAME_CHARS - len(extension) - 1]}.{extension}"
        else:
            name = name[:MAX_FILENAME_CHARS]
    return name


EXTENSIONS: dict[str, tuple[str, ...]] = {
    "image/png": (".png",),
    "image/jpeg": (".jpg", ".jpeg"),
    "image/gif": (".gif",),
    "image/webp": (".webp",),
    "application/pdf": (".pdf",),
    "text/plain": (".txt", ".text", ".log"),
    "text/csv": (".csv",),
    "text/markdown": (".md", ".markdown"),
    "application/json": (".json",),
    "application/zip": (".zip",),
}
"""The extensions a file of each default ``FILE_ALLOWED_TYPES`` type may be saved under, the first
one added when its name ends otherwise. Written out: the standard library's table differs between
machines (it reads ``/etc/mime.types``), lacks ``image/webp`` on Python 3.11 and gives ``text/plain``
``.bat``."""


def name_for_type(filename: str, content_type: str) -> str:
    """``filename`` ending in an extension of ``content_type``: ``report.html`` stored as ``text/plain``
    becomes ``report.html.txt``, so that a member's browser saves it as what it was checked to be,
    never as a page or a program (``invoice.pdf.exe``). A type without a known extension (one an
    operator added to ``FILE_ALLOWED_TYPES``) keeps the name as sent."""
    extensions = EXTENSIONS.get(content_type)
    if not extensions or filename.lower().endswith(extensions):
        return filename
    return f"{filename[: MAX_FILENAME_CHARS - len(extensions[0])]}{extensions[0]}"


def media_type_of(value: str | None) -> str:
    """``Text/Plain; charset=utf-8`` → ``text/plain``; a part without a type is octet-stream. (Its
    charset is the segment's own ``charset``, parsed from the same header: :func:`declared_charset`.)"""
    if not value:
        return "application/octet-stream"
    return value.split(";", 1)[0].strip().lower()


def declared_charset(label: str | None) -> str | None:
    """The charset a part declares, by the name a download states it (``_CHARSETS``), or None when
    there is none to trust: not a plain token of at most 40 characters, a codec Python does not know
    or that no browser decodes, or any name of UTF-8, which is checked against the bytes instead (a
    label that lies about UTF-8 is not repeated)."""
    if label is None or _CHARSET_LABEL.fullmatch(label) is None:
        return None
    try:
        codec = codecs.lookup(label)
    except LookupError:
        return None
    return _CHARSETS.get(codec.name)


class _Utf8Check:
    """Whether the chunks fed so far are valid UTF-8 (a BOM included), holding at most one incomplete
    character between chunks: a character may straddle two of them."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self.valid = True

    def feed(self, data: bytes | bytearray, *, final: bool = False) -> None:
        if not self.valid:
            return
        try:
            self._decoder.decode(data, final)
        except UnicodeDecodeError:
            self.valid = False
            self._decoder.reset()


def _boundary(content_type: str | None) -> str:
    media_type, options = parse_options_header(content_type or "")
    if media_type.lower() != "multipart/form-data":
        raise UnsupportedFileTypeError("Upload the file as multipart/form-data with a part named `file`.")
    boundary = options.get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise InvalidUploadError("The multipart/form-data content type has no valid boundary.")
    return str(boundary)


def _write(handle: BinaryIO, hasher: hashlib._Hash, utf8: _Utf8Check | None, data: bytes | bytearray) -> None:
    handle.write(data)
    hasher.update(data)
    if utf8 is not None:
        utf8.feed(data)


def _finish(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OpenedFile(BaseLocalFileSystem):
    """One stored file already open: Litestar's ``File`` response reads it as its file system.

    ``File`` opens its path only when it sends the body, after the status line; served through
    this, it reads the handle opened before the answer began. The response closes the handle (an
    answer that sends no body closes it with :meth:`close`).

    :meth:`part` is the same file seen as bytes ``offset`` … ``offset + length - 1`` only: ``File``
    then streams that window in its chunks and reports its length as the ``Content-Length``.
    """

    def __init__(
        self, path: Path, handle: BinaryIO, stat: os.stat_result, *, window: tuple[int, int] | None = None
    ) -> None:
        self.path = path
        self.handle = handle
        self.stat = stat
        self.window = window

    def part(self, offset: int, length: int) -> OpenedFile:
        """The same open file, read from ``offset`` for ``length`` bytes (within its size)."""
        if offset < 0 or length < 0 or offset + length > self.stat.st_size:
            raise ValueError(f"bytes {offset}+{length} are not within a file of {self.stat.st_size}")
        return OpenedFile(self.path, self.handle, self.stat, window=(offset, length))

    def close(self) -> None:
        self.handle.close()

    async def info(self, path: PathType, **kwargs: Any) -> FileInfo:
        info = await FileSystemAdapter.parse_stat_result(path, self.stat)
        if self.window is not None:
            info["size"] = self.window[1]
        return info

    async def open(self, file: PathType, mode: str, buffering: int = -1) -> AsyncFile[Any]:
        if self.window is None:
            return anyio.wrap_file(self.handle)
        return anyio.wrap_file(io.BufferedReader(_Window(self.handle, *self.window)))


class _Window(io.RawIOBase):
    """Bytes ``offset`` … ``offset + length - 1`` of an open file, then end of file: Litestar's
    ``File`` reads a file to its end and takes no offset, so a part is served as a file of its own.

    Reads with ``os.pread`` (no shared file position); closing it closes the underlying handle.
    """

    def __init__(self, handle: BinaryIO, offset: int, length: int) -> None:
        super().__init__()
        self._handle = handle
        self._position = offset
        self._end = offset + length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        wanted = min(len(buffer), self._end - self._position)
        if wanted <= 0:
            return 0
        data = os.pread(self._handle.fileno(), wanted, self._position)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)

    def readall(self) -> bytes:
        """The rest of the window in one read (``File`` reads a body under its chunk size at once)."""
        data = os.pread(self._handle.fileno(), max(0, self._end - self._position), self._position)
        self._position += len(data)
        return data

    def close(self) -> None:
        if not self.closed:
            self._handle.close()
        super().close()


class FileStorage:
    """Stored objects under ``root``; see the module docstring for the layout and guarantees."""

    def __init__(self, root: Path, *, min_free_bytes: int = 0) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.min_free_bytes = min_free_bytes
        self._low_room_warnings = OncePerInterval(60.0)

    async def require_room(self, upload_bytes: int) -> None:
        """507 ``storage-full`` unless the file system keeps ``min_free_bytes`` free after an upload of
        at most ``upload_bytes`` (``FILE_MIN_FREE_BYTES``). Uploads in flight are not added up: each
        is at most ``FILE_MAX_BYTES``, and few run at once (``FILE_UPLOADS_PER_USER``)."""
        if not self.min_free_bytes:
            return
        free = await anyio.to_thread.run_sync(_free_bytes, self.root)
        if free - upload_bytes < self.min_free_bytes:
            if self._low_room_warnings.due():
                log.error(
                    "file_storage_low",
                    files_dir=str(self.root),
                    free_bytes=free,
                    min_free_bytes=self.min_free_bytes,
                    hint="uploads are refused (507) until FILES_DIR's file system has room again",
                )
            raise StorageFullError(
                "The server has no room left to store files; nothing was stored. Try again later."
            )

    @staticmethod
    def new_key(project_id: int) -> str:
        return f"{project_id}/{uuid.uuid4().hex}"

    def new_temp_path(self) -> Path:
        """Where an upload will be staged (created by :meth:`receive` once its file part begins)."""
        return self.tmp_dir / f"{uuid.uuid4().hex}.part"

    async def keep_fresh(self, temp_path: Path) -> None:
        """Mark a staged file as still in use (its mtime, which the sweep judges staleness by): an
        upload trickling in may not have written to it for a while (writes are buffered)."""
        await anyio.to_thread.run_sync(_touch, temp_path)

    def path_for(self, storage_key: str) -> Path:
        """The file of a stored key; refuses anything but ``<project_id>/<uuid>`` (no traversal)."""
        if not _STORAGE_KEY.fullmatch(storage_key):
            raise ValueError(f"invalid storage key {storage_key!r}")
        return self.root / storage_key

    async def receive(
        self,
        body: AsyncGenerator[bytes, None],
        *,
        content_type: str | None,
        content_length: int | None,
        max_bytes: int,
        allowed_types: Collection[str],
        temp_path: Path,
    ) -> StagedFile:
        """Stream the one ``file`` part of a multipart body into ``temp_path`` (:meth:`new_temp_path`).

        Raises 400 (malformed body, missing/extra parts), 413 (file over ``max_bytes`` or body over
        ``max_bytes`` + multipart overhead) or 415 (not multipart, or a type not in ``allowed_types``).
        """
        boundary = _boundary(content_type)
        body_limit = max_bytes + MULTIPART_OVERHEAD
        if content_length is not None and content_length > body_limit:
            raise PayloadTooLargeError(f"Files may be at most {max_bytes} bytes.")
        upload = _Upload(temp_path, max_bytes, allowed_types)
        try:
            received = 0
            with PushMultipartParser(boundary, max_header_count=8, max_segment_count=8) as parser:
                async with aclosing(body) as chunks:
                    async for chunk in chunks:
                        received += len(chunk)
                        if received > body_limit:
                            raise PayloadTooLargeError(f"Files may be at most {max_bytes} bytes.")
                        for event in parser.parse(chunk):
                            await upload.feed(event)
                        if parser.closed:
                            break
            return await upload.finish()
        except MultipartError as exc:
            upload.discard()
            # The parser's sentence only: its further arguments may repeat the client's bytes (a part
            # header that is not UTF-8 came back as a Python repr of a UnicodeDecodeError).
            said = exc.args[0] if exc.args and isinstance(exc.args[0], str) else "unreadable"
            raise InvalidUploadError(f"Malformed multipart/form-data body: {said}.") from None
        except OSError as exc:
            upload.discard()
            _refuse_if_full(exc, self.root)
            raise
        except BaseException:
            upload.discard()
            raise

    async def place(self, temp_path: Path, storage_key: str) -> Path:
        """Rename a staged file to its final key (same filesystem: atomic) and make that durable.

        408 ``upload-expired`` when the staged file is gone (the sweep removed it as stale).
        """
        final = self.path_for(storage_key)

        def move() -> None:
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                temp_path.rename(final)
            except FileNotFoundError:
                if temp_path.exists():
                    raise
                log.warning("staged_file_vanished", temp_path=str(temp_path), storage_key=storage_key)
                raise UploadExpiredError(
                    "The uploaded file was removed before it could be stored (staged files not written "
                    "for FILE_TEMP_MAX_AGE_S are swept): send it again."
                ) from None
            _fsync_dir(final.parent)

        try:
            await anyio.to_thread.run_sync(move)
        except OSError as exc:
            _refuse_if_full(exc, self.root)
            raise
        return final

    async def open(self, storage_key: str) -> OpenedFile | None:
        """The stored file opened for reading, or None if it is not on disk.

        A download streams from this handle, not from the path: a delete that unlinks the path
        after the answer's headers left cannot cut its body.
        """
        path = self.path_for(storage_key)

        def open_regular() -> OpenedFile | None:
            try:
                handle = path.open("rb")
            except FileNotFoundError:
                return None
            result = os.fstat(handle.fileno())
            if not S_ISREG(result.st_mode):
                handle.close()
                return None
            return OpenedFile(path, handle, result)

        return await anyio.to_thread.run_sync(open_regular)

    async def modified_at(self, storage_key: str) -> float | None:
        """The stored file's modification time (its ``Last-Modified``), None when it is missing."""
        try:
            return (await anyio.Path(self.path_for(storage_key)).stat()).st_mtime
        except FileNotFoundError:
            return None

    async def remove(self, storage_key: str) -> None:
        """Delete a stored file; one already gone is fine."""
        await anyio.to_thread.run_sync(self.discard, self.path_for(storage_key))

    @staticmethod
    def discard(path: Path) -> None:
        """Inline, idempotent cleanup (also safe while the task is being cancelled)."""
        path.unlink(missing_ok=True)

    async def remove_project(self, project_id: int) -> None:
        """Delete a project's directory and every file in it; one already gone is fine."""
        directory = self.root / str(int(project_id))
        await anyio.to_thread.run_sync(partial(shutil.rmtree, directory, ignore_errors=True))

    async def inventory(
        self, *, files_older_than_s: float, temp_older_than_s: float
    ) -> tuple[dict[int, list[str]], list[Path]]:
        """What the sweep looks at: every project directory with its stored keys last modified more
        than ``files_older_than_s`` ago, and temp files older than ``temp_older_than_s`` (younger
        ones may belong to an upload in flight)."""
        now = time.time()
        return await anyio.to_thread.run_sync(
            self._inventory, now - files_older_than_s, now - temp_older_than_s
        )

    def _inventory(self, cutoff: float, temp_cutoff: float) -> tuple[dict[int, list[str]], list[Path]]:
        projects: dict[int, list[str]] = {}
        stale_temp: list[Path] = []
        if not self.root.is_dir():
            return projects, stale_temp
        for entry in self.root.iterdir():
            if entry.name.isdigit() and entry.is_dir():
                keys = [
                    f"{entry.name}/{file.name}"
                    for file in entry.iterdir()
                    if _STORAGE_KEY.fullmatch(f"{entry.name}/{file.name}") and _older(file, cutoff)
                ]
                projects[int(entry.name)] = keys
        if self.tmp_dir.is_dir():
            stale_temp = [p for p in self.tmp_dir.glob("*.part") if _older(p, temp_cutoff)]
        return projects, stale_temp


def _touch(path: Path) -> None:
    # Missing: not created yet (the file part has not begun), or already discarded.
    with contextlib.suppress(FileNotFoundError):
        os.utime(path)


def _older(path: Path, cutoff: float) -> bool:
    try:
        return path.lstat().st_mtime < cutoff
    except FileNotFoundError:
        return False


class _Upload:
    """Parser events → one temp file, with the part rules and the size limit applied as data arrives."""

    def __init__(self, temp_path: Path, max_bytes: int, allowed_types: Collection[str]) -> None:
        self.temp_path = temp_path
        self.max_bytes = max_bytes
        self.allowed_types = allowed_types
        self.path: Path | None = None  # once created
        self.handle: BinaryIO | None = None
        self.hasher = hashlib.sha256()
        self.size = 0
        self.filename = ""
        self.content_type = ""
        self.charset: str | None = None
        self.utf8: _Utf8Check | None = None  # a text file whose charset the bytes decide
        self.seen_part = False
        self.complete = False

    async def feed(self, event: MultipartSegment | bytes | bytearray | None) -> None:
        if isinstance(event, MultipartSegment):
            await self._start(event)
        elif event:
            self.size += len(event)
            if self.size > self.max_bytes:
                raise PayloadTooLargeError(f"Files may be at most {self.max_bytes} bytes.")
            assert self.handle is not None
            await anyio.to_thread.run_sync(_write, self.handle, self.hasher, self.utf8, event)
        elif event is None:
            self.complete = True

    async def _start(self, segment: MultipartSegment) -> None:
        if self.seen_part:
            raise InvalidUploadError(f"Send exactly one part, the file, named `{FILE_FIELD}`.")
        self.seen_part = True
        if segment.name != FILE_FIELD or not segment.filename:
            raise InvalidUploadError(
                f"Send exactly one part, the file, named `{FILE_FIELD}`, with a filename."
            )
        self.content_type = media_type_of(segment.content_type)
        if self.content_type not in self.allowed_types:
            raise UnsupportedFileTypeError(
                f"Files of type {self.content_type!r} are not accepted; allowed: "
                + ", ".join(sorted(self.allowed_types))
            )
        if self.content_type.startswith("text/"):
            self.charset = declared_charset(segment.charset)
            if self.charset is None:
                self.utf8 = _Utf8Check()
        self.filename = name_for_type(sanitize_filename(segment.filename), self.content_type)
        self.path = path = self.temp_path

        def create() -> BinaryIO:
            path.parent.mkdir(parents=True, exist_ok=True)
            return path.open("xb")

        self.handle = await anyio.to_thread.run_sync(create)

    async def finish(self) -> StagedFile:
        if not self.complete or self.handle is None or self.path is None:
            raise InvalidUploadError(f"The body has no complete part named `{FILE_FIELD}`.")
        await anyio.to_thread.run_sync(_finish, self.handle)
        self.handle = None
        if self.utf8 is not None:
            self.utf8.feed(b"", final=True)  # a character cut off at the end is invalid
            self.charset = "utf-8" if self.utf8.valid else None
        return StagedFile(
            path=self.path,
            filename=self.filename,
            content_type=self.content_type,
            charset=self.charset,
            size_bytes=self.size,
            sha256=self.hasher.hexdigest(),
        )

    def discard(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        if self.path is not None:
            FileStorage.discard(self.path)


def check_files_dir(settings: Settings) -> None:
    """The module's settings check: ``FILES_DIR`` (``uploads_dir``) can hold a staged file (one is
    written where an upload's would be, and removed). An unwritable one (a volume the app's user cannot
    write) started healthy and answered every upload 500."""
    probe = FileStorage(settings.uploads_dir).new_temp_path()
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        named = (
            f"FILES_DIR {str(settings.files_dir)!r}"
            if settings.files_dir is not None
            else f"DATA_DIR {str(settings.data_dir)!r} (FILES_DIR unset: DATA_DIR/files)"
        )
        raise SettingsError(
            f"{named} cannot hold uploads for user id {os.getuid()}: {exc.strerror or exc}"
        ) from None
