"""The SDK's local state directory: every record encrypted at rest under a key derived
from the user's passphrase.

Layout of `root`:
- `state.json`: the KDF salt and cost, and a check value (a SecretBox of a constant) so a
  wrong passphrase fails at open with `WrongPassphrase` instead of garbage later;
- `records/<name hash>`: one file per record, a SecretBox of msgpack `[name, value]`.
  File names are keyed hashes of the record names, so a directory listing says nothing
  about whom the user talks to.

Why argon2id (PyNaCl's `kdf`): the passphrase is the only secret and the files may be
copied off the device; a slow memory-hard KDF makes guessing it expensive. Why one file
per record: a Megolm message changes one inbound session, not the whole state, so a
write costs one small file. Each write is atomic (temp file, fsync, rename): a crash
leaves the old record or the new one, never half of one. Record values are opaque bytes;
vodozemac's own pickles inside them are encrypted again with `pickle_key` (a subkey, not
the file key), as vodozemac requires a 32-byte key anyway.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from pathlib import Path

import msgpack
import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.pwhash.argon2id
import nacl.secret
import nacl.utils

from chatd.e2e.errors import StateCorrupt, WrongPassphrase

_CHECK = b"chatd-e2e-state-v1"
_HEADER = "state.json"
_RECORDS = "records"

#: libsodium's INTERACTIVE cost (~80 ms, 64 MiB here): opening the state is interactive.
DEFAULT_OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
DEFAULT_MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` all at once, durable before this returns."""
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _subkey(master: bytes, purpose: bytes) -> bytes:
    return nacl.hash.blake2b(purpose, key=master, digest_size=32,
                             encoder=nacl.encoding.RawEncoder)


class StateStore:
    """Named records (bytes) held in memory and written through to encrypted files."""

    def __init__(self, root: Path, master_key: bytes) -> None:
        self.root = root
        self._box = nacl.secret.SecretBox(_subkey(master_key, b"chatd-e2e-files"))
        self._name_key = _subkey(master_key, b"chatd-e2e-names")
        #: The key of vodozemac's pickles (exactly 32 bytes, as it requires).
        self.pickle_key = _subkey(master_key, b"chatd-e2e-pickles")
        self._records: dict[str, bytes] = {}

    @classmethod
    def open(cls, root: Path, passphrase: str, *, opslimit: int = DEFAULT_OPSLIMIT,
             memlimit: int = DEFAULT_MEMLIMIT) -> StateStore:
        """Open the state at `root`, creating it (with this cost) when it does not exist.
        An existing state keeps the KDF cost it was made with."""
        if not passphrase:
            raise WrongPassphrase("an empty passphrase cannot protect the E2E state")
        header_path = root / _HEADER
        if header_path.exists():
            try:
                header = json.loads(header_path.read_text())
                salt = base64.b64decode(header["salt"])
                opslimit, memlimit = int(header["opslimit"]), int(header["memlimit"])
                check = base64.b64decode(header["check"])
            except (ValueError, KeyError, TypeError) as exc:
                raise StateCorrupt(f"{header_path} is not a chatd E2E state header") from exc
            store = cls(root, _derive(passphrase, salt, opslimit, memlimit))
            store.unlock(check)
            return store
        root.mkdir(parents=True, exist_ok=True)
        (root / _RECORDS).mkdir(exist_ok=True)
        salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
        master = _derive(passphrase, salt, opslimit, memlimit)
        store = cls(root, master)
        header = {"version": 1, "kdf": "argon2id", "opslimit": opslimit,
                  "memlimit": memlimit, "salt": base64.b64encode(salt).decode(),
                  "check": base64.b64encode(store.seal(_CHECK)).decode()}
        atomic_write(header_path, json.dumps(header).encode())
        return store

    def seal(self, data: bytes) -> bytes:
        sealed: bytes = self._box.encrypt(data)
        return sealed

    def unlock(self, check: bytes) -> None:
        """Check the passphrase against the header's check value, then read every
        record."""
        try:
            if self._box.decrypt(check) != _CHECK:
                raise WrongPassphrase("the passphrase does not open this E2E state")
        except nacl.exceptions.CryptoError:
            raise WrongPassphrase(
                f"the passphrase does not open the E2E state in {self.root}") from None
        self._load()

    def _file_of(self, name: str) -> Path:
        digest = nacl.hash.blake2b(name.encode(), key=self._name_key, digest_size=16)
        return self.root / _RECORDS / digest.decode()

    def _load(self) -> None:
        directory = self.root / _RECORDS
        directory.mkdir(exist_ok=True)
        for path in directory.iterdir():
            if path.name.startswith(".tmp-"):
                path.unlink()  # a write that a crash interrupted: the old record stands
                continue
            try:
                name, value = msgpack.unpackb(self._box.decrypt(path.read_bytes()),
                                              raw=False)
            except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
                raise StateCorrupt(f"E2E state record {path.name} cannot be read") from exc
            if not (isinstance(name, str) and isinstance(value, bytes)):
                raise StateCorrupt(f"E2E state record {path.name} has the wrong shape")
            self._records[name] = value

    def get(self, name: str) -> bytes | None:
        return self._records.get(name)

    def put(self, name: str, value: bytes) -> None:
        if self._records.get(name) == value:
            return
        atomic_write(self._file_of(name), self.seal(msgpack.packb([name, value],
                                                                  use_bin_type=True)))
        self._records[name] = value

    def delete(self, name: str) -> None:
        if self._records.pop(name, None) is not None:
            self._file_of(name).unlink(missing_ok=True)

    def names(self, prefix: str = "") -> list[str]:
        return sorted(name for name in self._records if name.startswith(prefix))


def _derive(passphrase: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    key: bytes = nacl.pwhash.argon2id.kdf(nacl.secret.SecretBox.KEY_SIZE,
                                          passphrase.encode(), salt,
                                          opslimit=opslimit, memlimit=memlimit)
    return key
