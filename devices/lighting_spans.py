"""Which reads and writes cover a lamp controller's lamps: poll spans, read-back spans and level
table runs, planned from the profile (pure functions; the driver in `devices.lighting` uses them).
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass

from devices.profiles.lighting import LampControllerProfile


@dataclass(frozen=True, slots=True)
class ReadSpan:
    """One read request: `count` registers from `address`, and what sits where in them.

    `lamp_ids` and `lamp_offsets`: each lamp's id and its block's offset in the reply (not a pair
    a lamp: 3.5 MB at 54,000); `controller` the controller block's offset, if this read covers it.
    """

    address: int
    count: int
    lamp_ids: tuple[str, ...]
    lamp_offsets: tuple[int, ...]
    controller: int | None = None


def plan_reads(
    profile: LampControllerProfile,
    lamps: Sequence[tuple[int, str]],
    *,
    include_controller: bool = True,
    max_gap: int | None = None,
) -> tuple[ReadSpan, ...]:
    """Coalesce the controller block and the lamp blocks into as few reads as possible.

    Neighbouring blocks merge while the read stays within `max_read_registers` and the
    gap between them is at most `max_gap` registers (default: the lamp padding,
    stride - span, which a device serves; undefined gaps may be refused).
    """
    gap = profile.lamp_stride - profile.lamp.span if max_gap is None else max_gap
    items: list[tuple[int, int, str | None]] = [
        (profile.lamp_base(index), profile.lamp.span, device_id) for index, device_id in lamps
    ]
    if include_controller:
        items.append((profile.controller.base, profile.controller.span, None))
    items.sort(key=lambda it: it[0])
    spans: list[ReadSpan] = []
    start = end = -1
    members: list[tuple[int, int, str | None]] = []

    def flush() -> None:
        if members:
            spans.append(
                ReadSpan(
                    address=start,
                    count=end - start,
                    lamp_ids=tuple(d for _, _, d in members if d is not None),
                    lamp_offsets=tuple(a - start for a, _, d in members if d is not None),
                    controller=next((a - start for a, _, d in members if d is None), None),
                )
            )

    for addr, span, device_id in items:
        if members and addr - end <= gap and addr + span - start <= profile.max_read_registers:
            end = max(end, addr + span)
        else:
            flush()
            start, end, members = addr, addr + span, []
        members.append((addr, span, device_id))
    flush()
    return tuple(spans)


def readback_spans(spans: Sequence[ReadSpan], addresses: Iterable[int]) -> list[tuple[int, int]]:
    """(address, count) reads covering `addresses`, each inside one poll span (registers the
    device serves, as the polls read them): a batch of writes is confirmed in a few reads."""
    hits: dict[int, list[int]] = {}
    for a in addresses:
        rs = next((r for r in spans if r.address <= a < r.address + r.count), None)
        if rs is None:
            raise ValueError(f"register {a} is in no poll span")
        hits.setdefault(rs.address, []).append(a)
    return [(min(lst), max(lst) - min(lst) + 1) for lst in hits.values()]


def table_runs(indices: Sequence[int], served: Container[int], limit: int) -> list[tuple[int, int]]:
    """(first index, count) runs over sorted lamp `indices` of a level table, at most `limit`
    long, bridging only indices the controller `served` (a register it does not serve may be
    refused): each run is one write-multiple or one read of the table."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs:
            first, n = runs[-1]
            last = first + n - 1
            if i - first < limit and all(j in served for j in range(last + 1, i)):
                runs[-1] = (first, i - first + 1)
                continue
        runs.append((i, 1))
    return runs


def compact(indices: Iterable[int]) -> Container[int]:
    """A set of lamp indices as a range when it is one (a controller's lamps 0..99 usually
    are): a frozenset of 100 ints is 4 kB, 538 of them 2 MB for nothing."""
    got = sorted(set(indices))
    if got and got[-1] - got[0] + 1 == len(got):
        return range(got[0], got[-1] + 1)
    return frozenset(got)
