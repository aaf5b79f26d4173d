"""The bytes of this process's own async writes, kept to pay the regions they are owed.

An async write returns once one region holds the object; the ledger owes the others. Without a
seed, paying them means downloading the object back from the region that holds it and hashing it
again. With one, the replicator sends the very bytes the writer read: the file kept open (so its
removal by the caller does not matter) or, for a small one, the buffer already in memory. Each
part is hashed again as it is read and compared with the digest taken at write time, so a file
changed in place since is refused and the region is paid from another region's copy instead.

Seeds are an optimisation, never the record: the ledger says what is owed, and a seed is used only
for the exact generation and hash it was taken for. They are bounded (bytes held in memory, files
kept open) and dropped once every region they were kept for is paid.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from xregion.payload import Payload

MAX_BYTES = 256 * 2**20  # small payloads held in memory
MAX_FILES = 64  # multipart payloads kept open


@dataclass
class Seed:
    gen: int
    payload: Payload
    extra: dict
    regions: set[str] = field(default_factory=set)  # regions still owed this write


class Seeds:
    def __init__(self, max_bytes: int = MAX_BYTES, max_files: int = MAX_FILES):
        self.max_bytes, self.max_files = max_bytes, max_files
        self._seeds: dict[str, Seed] = {}
        self._lock = threading.Lock()

    def _room(self, payload: Payload) -> bool:
        held = [s.payload for s in self._seeds.values()]
        if payload.data is None:
            return sum(p.data is None for p in held) < self.max_files
        return sum(p.size for p in held if p.data is not None) + payload.size <= self.max_bytes

    def keep(self, key: str, gen: int, payload: Payload, extra: dict, regions: set[str]) -> bool:
        """Keep ``payload`` for ``regions``; True when kept (the seeds then own and close it)."""
        with self._lock:
            old = self._seeds.pop(key, None)
            if old is not None:
                old.payload.close()
            if not regions or not self._room(payload):
                return False
            self._seeds[key] = Seed(gen, payload, dict(extra), set(regions))
            return True

    def get(self, key: str, gen: int, sha256: str | None) -> Seed | None:
        with self._lock:
            seed = self._seeds.get(key)
        return seed if seed is not None and seed.gen == gen and seed.payload.sha256 == sha256 else None

    def paid(self, key: str, region: str) -> None:
        """``region`` holds the newest write of ``key`` now (from this seed or not)."""
        with self._lock:
            seed = self._seeds.get(key)
            if seed is None:
                return
            seed.regions.discard(region)
            if not seed.regions:
                del self._seeds[key]
                seed.payload.close()

    def drop(self, key: str) -> None:
        with self._lock:
            seed = self._seeds.pop(key, None)
        if seed is not None:
            seed.payload.close()

    def clear(self) -> None:
        with self._lock:
            seeds, self._seeds = list(self._seeds.values()), {}
        for seed in seeds:
            seed.payload.close()

    def __len__(self) -> int:
        return len(self._seeds)
