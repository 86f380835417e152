"""The judgment cache: an append-only JSONL store keyed by the exact request, safe to share.

**Keys.** `make_key` hashes exactly what decides a judgment: the rendered messages (system
+ user text: question, answers, references and the prompt's wording all live in it), the
judge (backend, model, endpoint), the sampling parameters, what the hf backend reads besides
the text (``score_prefix``, ``output_format``) and the repeat index. Changing any of them
makes a new key; nothing else does (a prompt's version label, a model's name or the order of
the run do not), so two items that send the same request share one judgment.

**Durability.** Each finished judgment (ok, parse_error or error) is appended and fsynced
the moment it arrives, so a run killed at any point loses only the calls in flight; the
re-run skips every stored key. When a key appears twice (an item judged again with
``retry_parse_errors`` / ``retry_errors``), the last record wins.

**Sharing between processes** (two ``ja-instruct judge`` runs on one cache file). All
coordination uses POSIX record locks (``fcntl.lockf``) on a sidecar file ``<cache>.lock``,
which the kernel drops when a process exits or is killed: no claim outlives its owner.

* The *store lock* (byte 0 of the sidecar) guards the file itself: it is held, briefly, to
  read the new tail of the store, to cut a torn last line left by a killed writer and to
  append one record. Lines therefore never interleave or glue together.
* A *claim* (one byte at an offset derived from the key) says "this process is judging this
  request". A run takes, under the store lock, a fresh look at the tail and claims every key
  it still needs; keys claimed by another process are not called: the run judges its own,
  then waits for the others (logging the other run's pid) and reads their results from the
  store. A claim is released only after its record is appended, so whoever gets the claim
  next sees the record. If the other run died or gave up on a key (record still missing),
  the waiting run judges it itself.

The sidecar must not be opened elsewhere in the same process: closing any descriptor of a
file drops every POSIX lock the process holds on it. Locks on NFS need a working lockd.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

from ja_instruct.errors import UserError
from ja_instruct.io import stable_hash

_STORE_LOCK = 0  # byte of the sidecar guarding reads of the tail and appends
_CHUNK = 1 << 16


def text_hash(obj: object) -> str:
    """Short sha256 of any JSON-able value (question turns, answers...)."""
    return stable_hash(obj)


def make_key(**parts: object) -> str:
    """The cache key of one judgment: the hash of everything in ``parts`` (see module doc for
    what callers pass: the exact request, never labels that do not reach the judge)."""
    return stable_hash(parts, length=32)


def request_key(judge: dict, system: str, user: str, prompt, repeat: int) -> str:
    """The key of one request: ``judge`` (`ja_instruct.judge.backends.judge_identity`: backend,
    model, endpoint, sampling), the exact messages, what the hf backend reads from the prompt
    besides the text, and the repeat index."""
    extra = {}
    scale = tuple(getattr(prompt, "scale", (1, 10)))
    if scale != (1, 10):  # the hf judge weighs the scale's labels; (1, 10) left out keeps older keys
        extra["scale"] = list(scale)
    return make_key(v=2, judge=judge, system=system, user=user, score_prefix=prompt.score_prefix,
                    output_format=prompt.output_format, repeat=repeat, **extra)


def _claim_offset(key: str) -> int:
    # 60 bits of the key: byte offsets up to 2**63 are valid lock ranges; collisions are
    # as unlikely as key collisions and would only make one run wait for the other
    return 1 + int(stable_hash(key, length=15), 16)


class JudgmentStore:
    """Dict-like view of the store file, kept current with `refresh`, plus `add` and claims.

    Use as a context manager; `close` releases every claim of this process."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise UserError("the judgment cache is a folder, not a file", file=self.path, field="judge.cache",
                            hint="Set judge.cache to a JSONL file path (default <judge dir>/cache.jsonl).")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, dict] = {}
        self._seq: dict[str, int] = {}  # key -> index of its latest record (changes when re-judged)
        self._count = 0
        self._offset = 0  # bytes of the store already read (always the end of a complete line)
        self._lines = 0  # lines already read (for error messages)
        self._lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        self._write_fd: int | None = None
        self._claims: set[str] = set()
        with self.locked():
            self.refresh()

    # ------------------------------------------------------------------ reading
    def __contains__(self, key: str) -> bool:
        return key in self.records

    def get(self, key: str) -> dict | None:
        """The latest record of ``key``, or None."""
        return self.records.get(key)

    def version(self, key: str) -> int | None:
        """Which record of the store ``key`` currently has (None: none): a change means
        someone judged the key since it was read."""
        return self._seq.get(key)

    def refresh(self) -> None:
        """Read the records appended since the last read (by any process). Call it under
        `locked` to see a consistent tail."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # an unterminated last line is a write in progress or torn
        lines = data[:end].split(b"\n")[:-1]
        for i, raw in enumerate(lines):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8"))
            except ValueError:  # JSONDecodeError and UnicodeDecodeError
                raise UserError("corrupt record in store", file=self.path, line=self._lines + i + 1,
                                hint="Delete the line (or the file to start over).") from None
            if isinstance(rec, dict) and "key" in rec:
                self._count += 1
                self.records[rec["key"]] = rec
                self._seq[rec["key"]] = self._count
        self._offset += end
        self._lines += len(lines)

    # ------------------------------------------------------------------ locking
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store lock (blocks while another process reads the tail or appends).
        Not re-entrant: POSIX locks are per process, so an inner release would free the outer."""
        fcntl.lockf(self._lock_fd, fcntl.LOCK_EX, 1, _STORE_LOCK)
        try:
            yield
        finally:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_UN, 1, _STORE_LOCK)

    def claim(self, key: str) -> bool:
        """Try to claim ``key`` for this process without waiting; False if another process holds it."""
        if key in self._claims:
            return True
        try:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _claim_offset(key))
        except OSError:
            return False
        self._claims.add(key)
        return True

    def release(self, key: str) -> None:
        """Release this process's claim on ``key`` (after its record is appended, or on failure)."""
        if key in self._claims:
            self._claims.discard(key)
            fcntl.lockf(self._lock_fd, fcntl.LOCK_UN, 1, _claim_offset(key))

    def holder(self, key: str) -> int | None:
        """The pid of the process holding the claim on ``key`` (Linux), else None."""
        if not sys.platform.startswith("linux"):
            return None  # struct flock's layout differs between systems
        fmt = "hhqqi"  # Linux: l_type, l_whence, l_start, l_len, l_pid
        try:
            res = fcntl.fcntl(self._lock_fd, fcntl.F_GETLK,
                              struct.pack(fmt, fcntl.F_WRLCK, os.SEEK_SET, _claim_offset(key), 1, 0))
            l_type, _, _, _, pid = struct.unpack(fmt, res)
        except (OSError, struct.error):
            return None
        return pid if l_type != fcntl.F_UNLCK and pid > 0 else None

    # ------------------------------------------------------------------ writing
    def add(self, record: dict) -> None:
        """Append ``record`` (fsynced) under the store lock, then read the tail (ours included)."""
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self.locked():
            if self._write_fd is None:
                self._write_fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
            self._cut_torn_tail()
            view = memoryview(line)
            while view:
                view = view[os.write(self._write_fd, view):]
            os.fsync(self._write_fd)
            self.refresh()

    def _cut_torn_tail(self) -> None:
        """Drop an unterminated last line: under the store lock only a killed writer leaves one."""
        fd = self._write_fd
        pos = os.fstat(fd).st_size
        if pos == 0 or os.pread(fd, 1, pos - 1) == b"\n":
            return
        while pos > 0:
            start = max(0, pos - _CHUNK)
            nl = os.pread(fd, pos - start, start).rfind(b"\n")
            if nl >= 0:
                os.ftruncate(fd, start + nl + 1)
                return
            pos = start
        os.ftruncate(fd, 0)

    def close(self) -> None:
        """Release every claim and close the files."""
        for key in list(self._claims):
            self.release(key)
        for name in ("_write_fd", "_lock_fd"):
            fd = getattr(self, name, None)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)

    def __enter__(self) -> "JudgmentStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
