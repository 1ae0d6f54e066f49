"""Routes: which plugin version a release gets, for whom, and why.

A target has a default plugin ref and an ordered list of routes. A route has a selector (one
context attribute — customer, project, plan or channel — and one or more values) or none, and
sends what it matches either to one plugin ref or into a weighted split between refs.
Resolution order, first match wins:

1. a customer or project pin (customer before project),
2. a plan or channel rule (plan before channel),
3. the target's split on everyone (a route without a selector),
4. the target's default.

A split is sticky: the value of its key attribute (``customer`` unless the route says otherwise)
is hashed with the route's salt into one of 2^32 buckets, and the split's *slices* give each
bucket range a ref. When the weights change, only the bucket ranges of refs that shrink are
handed to refs that grow: raising a canary's weight only adds keys to it, and a key never moves
between two refs whose weights did not change. A release whose context lacks the key attribute
is not split; it falls through to the next rule.

Everything here is pure: :class:`Router` is built once per target revision (the in-memory
routing snapshot) and resolves a context with a few dictionary lookups and at most one hash.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import secrets
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any, NamedTuple

from turnout.errors import ConfigurationError, UsageError
from turnout.refs import PluginRef

if TYPE_CHECKING:
    from turnout.registry import TargetSpec

BUCKETS = 1 << 32
"""How many buckets a split key hashes into."""

PINS = ("customer", "project")
RULES = ("plan", "channel")
SELECTORS = PINS + RULES
"""The context attributes a route may select on, in the order they are tried."""

DEFAULT_SPLIT_KEY = "customer"
HASH_SCHEME = "v1"
MAX_VALUES = 1000
MAX_VALUE_LENGTH = 200


def _bucket_v1(salt: bytes, value: str) -> int:
    """Scheme v1: a 4-byte BLAKE2b digest (``digest_size=4``, which differs from the first 4
    bytes of a longer digest) of the UTF-8 value, keyed with the route's salt, big-endian."""
    digest = hashlib.blake2b(value.encode(), digest_size=4, key=salt).digest()
    return int.from_bytes(digest, "big")


HASH_SCHEMES = {"v1": _bucket_v1}
"""Bucket functions by scheme name; a split records its scheme, so a new scheme never moves
the keys of a split made under an old one."""


def split_salt(target: str, revision: int) -> str:
    """The salt of a split made anew in ``revision`` of ``target``.

    Derived rather than random, so that a dry run (``turnout plan``) and the edit it previews
    hash every key alike: the plan names the very customers the edit then moves. A split that
    is edited keeps its salt; a rollback restores the salt of the revision it copies.
    """
    material = f"{target}\0{revision}".encode()
    return hashlib.blake2b(material, digest_size=8, person=b"turnout-split").hexdigest()


_ref = functools.lru_cache(maxsize=4096)(PluginRef.parse)
"""``PluginRef.parse``, once per distinct text: a snapshot of many targets names few versions."""


def bucket(value: str, salt: str, scheme: str = HASH_SCHEME) -> int:
    """The bucket (0 ≤ b < 2^32) that ``value`` falls in for a split salted with ``salt``."""
    return HASH_SCHEMES[scheme](bytes.fromhex(salt), value)


class Decision(NamedTuple):
    """Why a release gets its plugin version: the decision record, before it is stored."""

    plugin_ref: PluginRef
    revision: int
    rule: str
    route: str | None = None
    bucket: int | None = None
    key: str | None = None

    def record(self) -> dict[str, Any]:
        """The decision as stored with the release (JSON-ready)."""
        return {
            "revision": self.revision,
            "rule": self.rule,
            "route": self.route,
            "bucket": self.bucket,
            "key": self.key,
            "plugin": str(self.plugin_ref),
        }


# Routes ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Split:
    """A weighted split between refs, sticky on one context attribute.

    ``weights`` are percentages in the operators' order; ``slices`` map bucket ranges to refs:
    slice ``i`` covers ``[start_i, start_{i+1})``, the last one up to 2^32.
    """

    key: str
    salt: str
    weights: tuple[tuple[PluginRef, float], ...]
    slices: tuple[tuple[int, PluginRef], ...]
    scheme: str = HASH_SCHEME

    @classmethod
    def new(
        cls,
        weights: Sequence[tuple[PluginRef, float]],
        *,
        key: str = DEFAULT_SPLIT_KEY,
        previous: Split | None = None,
        salt: str | None = None,
    ) -> Split:
        """A split with ``weights``; from ``previous`` it keeps the salt and moves few keys.

        A split made anew takes ``salt`` (hex; see :func:`split_salt`), else a random one.

        Raises:
            UsageError: Fewer than two refs, a ref twice, a negative weight, or weights that do
                not add up to 100.
        """
        weights = _check_weights(weights)
        _check_name(key, "split key")
        if previous is not None and previous.key == key:
            return cls(key, previous.salt, weights, allocate(weights, previous.slices))
        return cls(key, salt or secrets.token_hex(8), weights, allocate(weights, ()))

    def share(self, ref: PluginRef) -> int:
        """How many buckets ``ref`` holds."""
        ends = [start for start, _ in self.slices[1:]] + [BUCKETS]
        return sum(
            end - start for (start, r), end in zip(self.slices, ends, strict=True) if r == ref
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "hash": self.scheme,
            "salt": self.salt,
            "weights": [[str(ref), weight] for ref, weight in self.weights],
            "slices": [[start, str(ref)] for start, ref in self.slices],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Split:
        scheme = data.get("hash", HASH_SCHEME)
        if scheme not in HASH_SCHEMES:
            raise ConfigurationError(
                f"a split uses hash scheme {scheme!r}, which this turnout does not know; "
                "upgrade turnout"
            )
        return cls(
            key=data["key"],
            salt=data["salt"],
            weights=tuple((_ref(ref), weight) for ref, weight in data["weights"]),
            slices=tuple((int(start), _ref(ref)) for start, ref in data["slices"]),
            scheme=scheme,
        )

    def describe(self) -> str:
        shares = ", ".join(f"{ref} {weight:g}%" for ref, weight in self.weights)
        return f"split by {self.key}: {shares}"


@dataclass(frozen=True, slots=True)
class Route:
    """One override on a target: what it selects, and the ref or split it sends it to."""

    id: str
    selector: str | None
    values: tuple[str, ...] = ()
    to: PluginRef | None = None
    split: Split | None = None

    def __post_init__(self) -> None:
        if (self.to is None) == (self.split is None):
            raise UsageError("a route goes to one plugin ref or to a split, not both or neither")
        if self.selector is None and self.to is not None:
            raise UsageError(
                "a route to one ref needs a selector (--customer, --project, --plan or "
                "--channel); to move everyone, point the target itself: turnout target set"
            )
        if self.selector is None and self.values:
            raise UsageError("values need a selector (--customer, --project, --plan or --channel)")
        if self.selector is not None and self.selector not in SELECTORS:
            raise UsageError(
                f"a route selects on one of {', '.join(SELECTORS)}, not {self.selector!r}"
            )
        if self.selector is not None:
            if not self.values:
                raise UsageError(f"a {self.selector} route needs at least one value")
            if len(self.values) > MAX_VALUES:
                raise UsageError(f"a route selects at most {MAX_VALUES} values")
            for value in self.values:
                _check_name(value, self.selector)
            if len(set(self.values)) != len(self.values):
                raise UsageError(f"a {self.selector} value is listed twice")

    @property
    def rule(self) -> str:
        """How the route reads in a decision record: ``customer=acme``, ``split by customer``."""
        if self.selector is None:
            assert self.split is not None  # noqa: S101 - checked in __post_init__
            return f"split by {self.split.key}"
        match = f"{self.selector}={','.join(self.values)}"
        return match if self.split is None else f"{match}, split by {self.split.key}"

    def refs(self) -> list[PluginRef]:
        if self.to is not None:
            return [self.to]
        assert self.split is not None  # noqa: S101 - checked in __post_init__
        return [ref for ref, _ in self.split.weights]

    def describe(self) -> str:
        """One line for people: what it matches and where it sends it."""
        match = "everyone" if self.selector is None else f"{self.selector}={','.join(self.values)}"
        where = str(self.to) if self.split is None else self.split.describe()
        return f"{match} -> {where}"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "match": None if self.selector is None else {self.selector: list(self.values)},
        }
        if self.to is not None:
            data["to"] = str(self.to)
        if self.split is not None:
            data["split"] = self.split.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Route:
        match = data.get("match") or {}
        selector, values = next(iter(match.items()), (None, ()))
        split = data.get("split")
        return cls(
            id=data["id"],
            selector=selector,
            values=tuple(values),
            to=_ref(data["to"]) if data.get("to") else None,
            split=Split.from_dict(split) if split else None,
        )


def parse_routes(data: Iterable[Mapping[str, Any]] | None) -> tuple[Route, ...]:
    """Routes as stored (a JSON list) to :class:`Route` objects."""
    return tuple(Route.from_dict(item) for item in data or ())


def route_dicts(routes: Iterable[Route]) -> list[dict[str, Any]]:
    return [route.to_dict() for route in routes]


PLAIN_TEXT = (
    f"a non-empty printable string of at most {MAX_VALUE_LENGTH} characters, without "
    "surrounding spaces"
)


def plain_text(value: object) -> bool:
    """Whether ``value`` is a name people type: a target, a selector or context value."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_VALUE_LENGTH
        and value.isprintable()
        and value.strip() == value
    )


def _check_name(value: str, what: str) -> None:
    if not plain_text(value):
        raise UsageError(f"invalid {what} {value!r}: {PLAIN_TEXT}")


def _check_weights(
    weights: Sequence[tuple[PluginRef, float]],
) -> tuple[tuple[PluginRef, float], ...]:
    checked = tuple((ref, float(weight)) for ref, weight in weights)
    refs = [ref for ref, _ in checked]
    if len(refs) < 2:
        raise UsageError("a split needs at least two refs: --to REF=WEIGHT --to REF=WEIGHT")
    if len(set(refs)) != len(refs):
        raise UsageError("a split names each ref once")
    for ref, weight in checked:
        if not math.isfinite(weight) or weight < 0 or weight > 100:
            raise UsageError(f"the weight of {ref} must be a percentage from 0 to 100")
    total = sum(weight for _, weight in checked)
    if abs(total - 100) > 1e-6:
        raise UsageError(f"split weights add up to {total:g}, not 100")
    return checked


# Allocation --------------------------------------------------------------------------------


def _sizes(weights: Sequence[tuple[PluginRef, float]]) -> dict[PluginRef, int]:
    """Buckets per ref, exactly 2^32 in all (largest remainder), from percentages."""
    shares = {ref: Fraction(str(weight)) * BUCKETS / 100 for ref, weight in weights}
    total = sum(shares.values())
    shares = {ref: share * BUCKETS / total for ref, share in shares.items()}
    sizes = {ref: math.floor(share) for ref, share in shares.items()}
    left = BUCKETS - sum(sizes.values())
    by_remainder = sorted(shares, key=lambda ref: (sizes[ref] - shares[ref], str(ref)))
    for ref in by_remainder[:left]:
        sizes[ref] += 1
    return sizes


@dataclass(slots=True)
class _Interval:
    start: int
    end: int
    ref: PluginRef


def allocate(
    weights: Sequence[tuple[PluginRef, float]],
    previous: Sequence[tuple[int, PluginRef]],
) -> tuple[tuple[int, PluginRef], ...]:
    """Slices for ``weights`` that move as few buckets as possible from ``previous``.

    Each ref that must shrink gives up buckets from the end of its highest slices; each ref
    that must grow takes freed buckets, lowest first. A bucket therefore only ever moves from
    a shrinking ref to a growing one. Without ``previous``, the refs are laid out in order.
    """
    sizes = _sizes(weights)
    ends = [start for start, _ in previous[1:]] + [BUCKETS]
    intervals = [
        _Interval(start, end, ref) for (start, ref), end in zip(previous, ends, strict=False)
    ]
    held: dict[PluginRef, int] = {}
    for interval in intervals:
        held[interval.ref] = held.get(interval.ref, 0) + interval.end - interval.start
    free = sorted(_shrink(intervals, held, sizes)) if intervals else [(0, BUCKETS)]
    for ref, _ in weights:
        need = sizes[ref] - held.get(ref, 0)
        while need > 0:
            start, end = free.pop(0)
            take = min(need, end - start)
            intervals.append(_Interval(start, start + take, ref))
            if start + take < end:
                free.insert(0, (start + take, end))
            need -= take
    merged: list[tuple[int, PluginRef]] = []
    for interval in sorted(intervals, key=lambda i: i.start):
        if interval.end > interval.start and (not merged or merged[-1][1] != interval.ref):
            merged.append((interval.start, interval.ref))
    return tuple(merged)


def _shrink(
    intervals: list[_Interval], held: dict[PluginRef, int], sizes: dict[PluginRef, int]
) -> list[tuple[int, int]]:
    """Cut each ref's excess from the end of its highest intervals; return what was freed."""
    freed = []
    for ref, count in held.items():
        excess = count - sizes.get(ref, 0)
        for interval in reversed(intervals):
            if excess <= 0:
                break
            if interval.ref == ref and interval.end > interval.start:
                take = min(excess, interval.end - interval.start)
                freed.append((interval.end - take, interval.end))
                interval.end -= take
                excess -= take
    return freed


# Resolution --------------------------------------------------------------------------------


class _CompiledSplit:
    """A split ready to resolve: the salt as bytes, slice starts and their refs."""

    __slots__ = ("hash", "key", "refs", "revision", "route", "rule", "salt", "starts")

    def __init__(self, route: Route, split: Split, revision: int) -> None:
        self.key = split.key
        self.salt = bytes.fromhex(split.salt)
        self.hash = HASH_SCHEMES[split.scheme]
        self.starts = [start for start, _ in split.slices]
        self.refs = [ref for _, ref in split.slices]
        self.route = route.id
        self.rule = route.rule
        self.revision = revision

    def choose(self, context: Mapping[str, str]) -> Decision | None:
        value = context.get(self.key)
        if value is None:
            return None
        number = self.hash(self.salt, value)
        ref = self.refs[bisect_right(self.starts, number) - 1]
        return Decision(ref, self.revision, self.rule, self.route, number, self.key)


class Router:
    """One target revision's routing, compiled for resolution: an entry of the snapshot."""

    __slots__ = ("default", "spec", "split", "tiers")

    def __init__(self, spec: TargetSpec) -> None:
        self.spec = spec
        revision = spec.revision
        tables: dict[str, dict[str, Decision | _CompiledSplit]] = {s: {} for s in SELECTORS}
        self.split: _CompiledSplit | None = None
        for route in spec.routes:
            if route.split is not None:
                choice: Decision | _CompiledSplit = _CompiledSplit(route, route.split, revision)
            else:
                assert route.to is not None  # noqa: S101 - a route has one or the other
                choice = Decision(route.to, revision, route.rule, route.id)
            if route.selector is None:
                assert isinstance(choice, _CompiledSplit)  # noqa: S101 - see Route
                self.split = choice
                continue
            for value in route.values:
                tables[route.selector].setdefault(value, choice)
        self.tiers = tuple((s, tables[s]) for s in SELECTORS if tables[s])
        self.default = Decision(spec.plugin_ref, revision, "target default")

    def resolve(self, context: Mapping[str, str]) -> Decision:
        """The plugin ref for a release with ``context``, and why."""
        for selector, table in self.tiers:
            choice = table.get(context.get(selector))  # type: ignore[arg-type]
            if choice is None:
                continue
            if type(choice) is Decision:
                return choice
            decision = choice.choose(context)  # type: ignore[union-attr]
            if decision is not None:
                return decision
        if self.split is not None:
            decision = self.split.choose(context)
            if decision is not None:
                return decision
        return self.default


def all_refs(spec: TargetSpec) -> list[PluginRef]:
    """The default ref and every route's refs, once each, in that order."""
    refs = [spec.plugin_ref]
    for route in spec.routes:
        refs.extend(ref for ref in route.refs() if ref not in refs)
    return refs


# Editing -----------------------------------------------------------------------------------


def _next_id(routes: Sequence[Route]) -> str:
    numbers = [int(r.id[1:]) for r in routes if r.id[:1] == "r" and r.id[1:].isdigit()]
    return f"r{max(numbers, default=0) + 1}"


def with_route(
    routes: Sequence[Route],
    selector: str | None,
    values: Sequence[str],
    *,
    to: PluginRef | None = None,
    weights: Sequence[tuple[PluginRef, float]] | None = None,
    key: str = DEFAULT_SPLIT_KEY,
    salt: str | None = None,
    target: str = "TARGET",
) -> tuple[Route, ...]:
    """``routes`` with a route for this selector added, or the same selector's route changed.

    The same selector with the same values re-points that route, keeping its id and place
    (and, for a split, its salt: the keys already in a ref stay there). A value already taken
    by another route is refused.

    Raises:
        UsageError: A value is routed by another route, or the route itself is malformed.
    """
    values = tuple(values)
    same = next(
        (r for r in routes if r.selector == selector and set(r.values) == set(values)), None
    )
    if same is None:
        for route in routes:
            if selector is None and route.selector is None:
                same = route  # one split on everyone per target
                break
            overlap = [v for v in values if route.selector == selector and v in route.values]
            if overlap:
                raise UsageError(
                    f"{selector} {', '.join(overlap)} is already routed by {route.id} "
                    f"({route.describe()}); remove it first: turnout route remove {target} "
                    f"{route.id}"
                )
    split = None
    if weights is not None:
        previous = same.split if same is not None else None
        split = Split.new(weights, key=key, previous=previous, salt=salt)
    new = Route(
        id=same.id if same is not None else _next_id(routes),
        selector=selector,
        values=values if same is None else same.values,
        to=to,
        split=split,
    )
    if same is None:
        return (*routes, new)
    return tuple(new if r is same else r for r in routes)


def without_route(routes: Sequence[Route], route_id: str) -> tuple[Route, ...]:
    """``routes`` without the route ``route_id``.

    Raises:
        UsageError: There is no such route.
    """
    if not any(r.id == route_id for r in routes):
        known = ", ".join(f"{r.id} ({r.describe()})" for r in routes) or "none"
        raise UsageError(f"no route {route_id!r}; the target's routes: {known}")
    return tuple(r for r in routes if r.id != route_id)


def find_route(
    routes: Sequence[Route], selector: str | None, value: str | None, target: str = "TARGET"
) -> Route:
    """The route whose selector matches ``selector=value`` (or the split on everyone).

    Raises:
        UsageError: None does.
    """
    for route in routes:
        if route.selector == selector and (selector is None or value in route.values):
            return route
    what = "split on everyone" if selector is None else f"route for {selector} {value!r}"
    raise UsageError(f"there is no {what}; see: turnout route list {target}")


# Blast radius ------------------------------------------------------------------------------


@dataclass(slots=True)
class Move:
    """Releases seen in history that a change would send from one version to another."""

    before: str | None
    after: str | None
    contexts: int = 0
    customers: set[str] = field(default_factory=set)
    projects: set[str] = field(default_factory=set)

    def to_dict(self) -> dict[str, Any]:
        return {
            "from": self.before,
            "to": self.after,
            "contexts": self.contexts,
            "customers": sorted(self.customers),
            "projects": sorted(self.projects),
        }


def blast_radius(
    before: Router | None, after: Router | None, contexts: Iterable[Mapping[str, str]]
) -> list[Move]:
    """Which of ``contexts`` (distinct release contexts) would change plugin version.

    ``None`` for a side means the target does not exist there.
    """
    moves: dict[tuple[str | None, str | None], Move] = {}
    for context in _distinct(contexts):
        old = str(before.resolve(context).plugin_ref) if before is not None else None
        new = str(after.resolve(context).plugin_ref) if after is not None else None
        if old == new:
            continue
        move = moves.get((old, new))
        if move is None:
            move = moves[(old, new)] = Move(old, new)
        move.contexts += 1
        if "customer" in context:
            move.customers.add(context["customer"])
        if "project" in context:
            move.projects.add(context["project"])
    return sorted(moves.values(), key=lambda m: (-m.contexts, str(m.before), str(m.after)))


def _distinct(contexts: Iterable[Mapping[str, str]]) -> Iterable[Mapping[str, str]]:
    seen: set[str] = set()
    for context in contexts:
        canonical = json.dumps(context, sort_keys=True)
        if canonical not in seen:
            seen.add(canonical)
            yield context


__all__ = [
    "BUCKETS",
    "SELECTORS",
    "Decision",
    "Move",
    "Route",
    "Router",
    "Split",
    "all_refs",
    "allocate",
    "blast_radius",
    "bucket",
    "find_route",
    "parse_routes",
    "split_salt",
    "with_route",
    "without_route",
]
