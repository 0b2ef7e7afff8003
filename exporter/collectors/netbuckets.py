"""bpf/net.bpf.c's direct-mapped counters (the net_buckets map): claimed, read and freed
here, through the map's mmap, so that reading them costs no syscall.

An interface owns bucket `ifindex & (buckets - 1)` when no other interface holds it, and
then counts in that bucket's 2 x ncpus entries (one per direction and CPU, NET_SLOT_SIZE
bytes each: the ifindex, then packets and bytes per protocol). Claiming zeroes the
counters first and writes the ifindex last (the program counts only where the ifindex
matches), before the interface is attached; freeing reads the last totals and writes 0.
An interface whose bucket is taken counts in the net_counters hash instead (network.py).
"""
from __future__ import annotations

import mmap
import struct

from .. import names
from ..bpfconsts import NET_SLOT_SIZE

NPROTO = len(names.PROTOCOLS)
DIRECTIONS = (names.DIR_RECEIVE, names.DIR_TRANSMIT)
_IFINDEX = struct.Struct("<I")
_COUNTS = struct.Struct(f"<{2 * NPROTO}Q")   # (packets, bytes) per protocol, at offset 8
_ZERO = bytes(_COUNTS.size)


def entries(buckets: int, ncpus: int) -> int:
    """The map's size for --net-buckets `buckets` (1 where there are none: a map has one)."""
    return max(1, buckets * 2 * ncpus)


class NetBuckets:
    def __init__(self, table, buckets: int, ncpus: int):
        self.buckets = buckets
        self.ncpus = ncpus
        self.owner: dict[int, int] = {}   # bucket -> the ifindex counting there
        self._mem = None
        if buckets:
            size = entries(buckets, ncpus) * NET_SLOT_SIZE
            self._mem = mmap.mmap(table.map_fd, -(-size // mmap.PAGESIZE) * mmap.PAGESIZE,
                                  mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    def _bucket(self, ifindex: int) -> int:
        return ifindex & (self.buckets - 1)

    def _offsets(self, bucket: int, direction: int):
        first = (bucket * 2 + direction) * self.ncpus
        return range(first * NET_SLOT_SIZE, (first + self.ncpus) * NET_SLOT_SIZE,
                     NET_SLOT_SIZE)

    def claim(self, ifindex: int) -> bool:
        """Give the interface its bucket if it is free; False: it counts in the hash."""
        if not self.buckets:
            return False
        bucket = self._bucket(ifindex)
        if bucket in self.owner:
            return self.owner[bucket] == ifindex
        for direction in DIRECTIONS:
            for off in self._offsets(bucket, direction):
                self._mem[off + 8:off + 8 + _COUNTS.size] = _ZERO
                _IFINDEX.pack_into(self._mem, off, ifindex)
        self.owner[bucket] = ifindex
        return True

    def holds(self, ifindex: int) -> bool:
        return bool(self.buckets) and self.owner.get(self._bucket(ifindex)) == ifindex

    def totals(self, ifindex: int) -> dict[tuple[int, int], tuple[int, int]]:
        """(direction, protocol) -> (packets, bytes), summed over CPUs; only non-zero ones."""
        out = {}
        bucket = self._bucket(ifindex)
        for direction in DIRECTIONS:
            sums = [0] * (2 * NPROTO)
            for off in self._offsets(bucket, direction):
                for i, v in enumerate(_COUNTS.unpack_from(self._mem, off + 8)):
                    sums[i] += v
            for proto in range(NPROTO):
                packets, nbytes = sums[2 * proto], sums[2 * proto + 1]
                if packets:
                    out[(direction, proto)] = (packets, nbytes)
        return out

    def release(self, ifindex: int) -> dict[tuple[int, int], tuple[int, int]]:
        """Free the interface's bucket; its last totals (empty if it held none)."""
        if not self.holds(ifindex):
            return {}
        last = self.totals(ifindex)
        bucket = self._bucket(ifindex)
        for direction in DIRECTIONS:
            for off in self._offsets(bucket, direction):
                _IFINDEX.pack_into(self._mem, off, 0)
        del self.owner[bucket]
        return last

    def close(self) -> None:
        if self._mem is not None:
            self._mem.close()
            self._mem = None
