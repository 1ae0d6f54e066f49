"""Routing: resolution order, sticky and monotonic splits, route editing, blast radius.

Pure: no database and no processes, so Hypothesis can try many routings quickly.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_right
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from turnout import routing
from turnout.errors import ConfigurationError, UsageError
from turnout.refs import PluginRef
from turnout.registry import TargetSpec
from turnout.routing import (
    BUCKETS,
    SELECTORS,
    Decision,
    Move,
    Route,
    Router,
    Split,
    all_refs,
    blast_radius,
    find_route,
    parse_routes,
    route_dicts,
    with_route,
    without_route,
)

DEFAULT = PluginRef.parse("webhook@1.0.0")
A = PluginRef.parse("webhook@2.0.0")
B = PluginRef.parse("webhook@2.1.0")
C = PluginRef.parse("webhook@3.0.0")
D = PluginRef.parse("webhook@3.1.0")
REFS = (A, B, C, D)

SALT = "0123456789abcdef"
SALTS = st.binary(min_size=8, max_size=8).map(bytes.hex)
"""Salts as ``Split.new`` makes them: 8 random bytes, in hex."""

NAMES = st.text(
    st.characters(exclude_categories=("C", "Z"), include_characters=" "),
    min_size=1,
    max_size=30,
).filter(lambda s: s.strip() == s)
"""Valid selector values: printable, no surrounding spaces."""

KEYS = [f"customer-{i}" for i in range(2_000)]


def router(*routes: Route, revision: int = 7) -> Router:
    return Router(
        TargetSpec(
            name="acme-prod",
            plugin_ref=DEFAULT,
            config={},
            max_attempts=3,
            timeout=60.0,
            isolation="process",
            revision=revision,
            routes=routes,
        )
    )


def salted(split: Split, salt: str = SALT) -> Split:
    """``split`` with a known salt; its slices do not depend on the salt."""
    return replace(split, salt=salt)


def ref_at(split: Split, number: int) -> PluginRef:
    """The ref whose slice holds bucket ``number``, read straight off the slices."""
    starts = [start for start, _ in split.slices]
    return split.slices[bisect_right(starts, number) - 1][1]


# Resolution --------------------------------------------------------------------------------

CUSTOMER_PIN = PluginRef.parse("webhook@9.0.0")
PROJECT_PIN = PluginRef.parse("webhook@8.0.0")
PLAN_RULE = PluginRef.parse("webhook@7.0.0")
CHANNEL_RULE = PluginRef.parse("webhook@6.0.0")
EVERYONE = salted(Split.new([(A, 50), (B, 50)]))
# Listed lowest priority first, so the order cannot come from the list.
ALL_KINDS = router(
    Route("r1", None, split=EVERYONE),
    Route("r2", "channel", ("beta",), to=CHANNEL_RULE),
    Route("r3", "plan", ("pro",), to=PLAN_RULE),
    Route("r4", "project", ("apollo",), to=PROJECT_PIN),
    Route("r5", "customer", ("acme",), to=CUSTOMER_PIN),
)


@pytest.mark.parametrize(
    ("context", "ref", "rule", "route"),
    [
        pytest.param(
            {"customer": "acme", "project": "apollo", "plan": "pro", "channel": "beta"},
            CUSTOMER_PIN,
            "customer=acme",
            "r5",
            id="customer-pin",
        ),
        pytest.param(
            {"customer": "initech", "project": "apollo", "plan": "pro", "channel": "beta"},
            PROJECT_PIN,
            "project=apollo",
            "r4",
            id="project-pin",
        ),
        pytest.param(
            {"customer": "initech", "project": "gemini", "plan": "pro", "channel": "beta"},
            PLAN_RULE,
            "plan=pro",
            "r3",
            id="plan-rule",
        ),
        pytest.param(
            {"customer": "initech", "plan": "free", "channel": "beta"},
            CHANNEL_RULE,
            "channel=beta",
            "r2",
            id="channel-rule",
        ),
        pytest.param({"project": "gemini"}, DEFAULT, "target default", None, id="default"),
    ],
)
def test_router_resolve_tries_pins_then_rules_then_split_then_default(
    context: dict[str, str], ref: PluginRef, rule: str, route: str | None
) -> None:
    assert ALL_KINDS.resolve(context) == Decision(ref, 7, rule, route)


def test_router_resolve_splits_unmatched_customer() -> None:
    context = {"customer": "initech", "project": "gemini", "plan": "free", "channel": "stable"}
    number = routing.bucket("initech", SALT, "v1")
    decision = ALL_KINDS.resolve(context)
    assert decision == Decision(
        A if number < BUCKETS // 2 else B, 7, "split by customer", "r1", number, "customer"
    )


def test_router_resolve_split_without_its_key_falls_through() -> None:
    plan_split = salted(Split.new([(A, 50), (B, 50)]))
    by_project = salted(Split.new([(C, 50), (D, 50)], key="project"))
    resolved = router(
        Route("r1", "plan", ("pro",), split=plan_split),
        Route("r2", "channel", ("beta",), to=CHANNEL_RULE),
        Route("r3", None, split=by_project),
    )

    with_customer = resolved.resolve({"plan": "pro", "customer": "acme", "channel": "beta"})
    assert (with_customer.rule, with_customer.key) == ("plan=pro, split by customer", "customer")
    assert resolved.resolve({"plan": "pro", "channel": "beta"}).plugin_ref == CHANNEL_RULE
    no_customer = resolved.resolve({"plan": "pro", "project": "apollo"})
    assert (no_customer.rule, no_customer.route, no_customer.key) == (
        "split by project",
        "r3",
        "project",
    )
    assert no_customer.bucket == routing.bucket("apollo", SALT)
    assert resolved.resolve({"plan": "pro"}) == Decision(DEFAULT, 7, "target default")


def test_router_resolve_matches_each_listed_value() -> None:
    resolved = router(Route("r1", "customer", ("acme", "globex"), to=A))
    pinned = Decision(A, 7, "customer=acme,globex", "r1")
    assert resolved.resolve({"customer": "acme"}) == pinned
    assert resolved.resolve({"customer": "globex"}) == pinned
    assert resolved.resolve({"customer": "initech"}).plugin_ref == DEFAULT
    assert resolved.resolve({"project": "acme"}).plugin_ref == DEFAULT


def test_decision_record_is_json_ready() -> None:
    decision = ALL_KINDS.resolve({"customer": "initech"})
    record = decision.record()
    assert record == {
        "revision": 7,
        "rule": "split by customer",
        "route": "r1",
        "bucket": routing.bucket("initech", SALT),
        "key": "customer",
        "plugin": str(decision.plugin_ref),
    }
    assert json.loads(json.dumps(record)) == record
    assert ALL_KINDS.resolve({}).record() == {
        "revision": 7,
        "rule": "target default",
        "route": None,
        "bucket": None,
        "key": None,
        "plugin": "webhook@1.0.0",
    }


def test_all_refs_lists_default_first_then_each_route_ref_once() -> None:
    resolved = router(
        Route("r1", "customer", ("acme",), to=A),
        Route("r2", None, split=salted(Split.new([(A, 50), (DEFAULT, 50)]))),
    )
    assert all_refs(resolved.spec) == [DEFAULT, A]


# Stickiness --------------------------------------------------------------------------------

PINNED = {"customer": "acme", "project": "apollo", "plan": "pro", "channel": "beta"}


@settings(max_examples=200, deadline=None)
@given(
    key=st.text(max_size=40),
    salt=SALTS,
    extra=st.dictionaries(
        st.sampled_from(["project", "plan", "channel", "region"]), st.text(max_size=20)
    ),
)
def test_router_split_is_sticky(key: str, salt: str, extra: dict[str, str]) -> None:
    assume(key != PINNED["customer"])
    assume(all(PINNED.get(name) != value for name, value in extra.items()))
    routes = (
        *(Route(f"r{i}", name, (value,), to=C) for i, (name, value) in enumerate(PINNED.items())),
        Route("r9", None, split=salted(Split.new([(A, 30), (B, 70)]), salt)),
    )
    resolved = router(*routes)

    decision = resolved.resolve({"customer": key})
    assert decision.bucket == routing.bucket(key, salt, "v1")
    assert 0 <= decision.bucket < BUCKETS
    assert decision.plugin_ref == (A if decision.bucket < BUCKETS * 3 // 10 else B)
    assert resolved.resolve({"customer": key}) == decision
    assert resolved.resolve({**extra, "customer": key}) == decision
    stored = parse_routes(json.loads(json.dumps(route_dicts(routes))))
    assert router(*stored).resolve({"customer": key}) == decision


# Monotonic ramps ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Ramp:
    """Weight vectors over ``refs`` in units of ``1 / scale`` percent."""

    refs: tuple[PluginRef, ...]
    scale: int
    steps: tuple[tuple[int, ...], ...]

    def weights(self, units: Sequence[int]) -> list[tuple[PluginRef, float]]:
        return [
            (ref, unit if self.scale == 1 else unit / self.scale)
            for ref, unit in zip(self.refs, units, strict=True)
        ]

    def exact(self, units: Sequence[int]) -> dict[PluginRef, Fraction]:
        """Each ref's exact share of the buckets."""
        return {
            ref: Fraction(unit, 100 * self.scale) * BUCKETS
            for ref, unit in zip(self.refs, units, strict=True)
        }


@st.composite
def weight_units(draw: st.DrawFn, count: int, scale: int) -> tuple[int, ...]:
    """``count`` non-negative integers adding up to ``100 * scale``."""
    total = 100 * scale
    cuts = sorted(draw(st.lists(st.integers(0, total), min_size=count - 1, max_size=count - 1)))
    return tuple(b - a for a, b in pairwise([0, *cuts, total]))


@st.composite
def canary_step(draw: st.DrawFn, units: tuple[int, ...]) -> tuple[int, ...]:
    """One ref takes weight from the others; none of the others grows."""
    canary = draw(st.integers(0, len(units) - 1))
    taken = [0 if i == canary else draw(st.integers(0, unit)) for i, unit in enumerate(units)]
    after = [unit - take for unit, take in zip(units, taken, strict=True)]
    after[canary] += sum(taken)
    return tuple(after)


@st.composite
def ramps(draw: st.DrawFn) -> Ramp:
    """2-4 refs, integer or 2-decimal percentages; each step a canary step or any new vector."""
    count = draw(st.integers(2, 4))
    scale = draw(st.sampled_from([1, 100]))
    steps = [draw(weight_units(count, scale))]
    for _ in range(draw(st.integers(1, 5))):
        if draw(st.booleans()):
            steps.append(draw(canary_step(steps[-1])))
        else:
            steps.append(draw(weight_units(count, scale)))
    return Ramp(REFS[:count], scale, tuple(steps))


def assert_slices_exact(split: Split, exact: Mapping[PluginRef, Fraction]) -> None:
    """Slices tile the buckets and give each ref its largest-remainder share."""
    starts = [start for start, _ in split.slices]
    assert starts[0] == 0
    assert all(a < b for a, b in pairwise(starts))
    assert starts[-1] < BUCKETS
    assert all(a != b for (_, a), (_, b) in pairwise(split.slices))
    assert {ref for _, ref in split.slices} <= set(exact)
    shares = {ref: split.share(ref) for ref in exact}
    assert sum(shares.values()) == BUCKETS
    for ref, share in shares.items():
        assert abs(share - exact[ref]) < 1, ref
    # Largest remainder: no ref rounded down had a larger remainder than one rounded up.
    remainders = {ref: exact[ref] - math.floor(exact[ref]) for ref in exact}
    up = [remainders[ref] for ref in exact if shares[ref] > exact[ref]]
    down = [remainders[ref] for ref in exact if shares[ref] < exact[ref]]
    assert min(up, default=1) >= max(down, default=0)


def moved_ranges(before: Split, after: Split) -> list[tuple[int, int, PluginRef, PluginRef]]:
    """Every bucket range ``[start, end)`` whose ref differs: ``(start, end, old, new)``."""
    starts = sorted({s for s, _ in before.slices} | {s for s, _ in after.slices})
    ranges = zip(starts, [*starts[1:], BUCKETS], strict=True)
    return [
        (start, end, ref_at(before, start), ref_at(after, start))
        for start, end in ranges
        if ref_at(before, start) != ref_at(after, start)
    ]


@settings(max_examples=60, deadline=None)
@given(ramp=ramps(), salt=SALTS)
# Weight 14 stays but its share gains one rounding bucket, handed over by the shrinking 74.
@example(ramp=Ramp(REFS, 1, ((12, 14, 74, 0), (16, 14, 70, 0))), salt=SALT)
def test_split_ramp_moves_keys_only_from_shrinking_to_growing_refs(ramp: Ramp, salt: str) -> None:
    split = salted(Split.new(ramp.weights(ramp.steps[0])), salt)
    assert_slices_exact(split, ramp.exact(ramp.steps[0]))
    seen = [router(Route("r1", None, split=split)).resolve({"customer": k}) for k in KEYS]

    for units_before, units_after in pairwise(ramp.steps):
        before, after = split, Split.new(ramp.weights(units_after), previous=split)
        assert after.salt == salt
        assert_slices_exact(after, ramp.exact(units_after))
        grown = {ref: after.share(ref) - before.share(ref) for ref in ramp.refs}
        weight_before = dict(zip(ramp.refs, units_before, strict=True))
        weight_after = dict(zip(ramp.refs, units_after, strict=True))
        fixed = {ref for ref in ramp.refs if weight_before[ref] == weight_after[ref]}

        # Every bucket, exactly.
        moved = moved_ranges(before, after)
        for _, _, old, new in moved:
            assert grown[old] < 0 < grown[new], (old, new)
            assert not (old in fixed and new in fixed), (old, new)
        fewest = sum(-change for change in grown.values() if change < 0)
        assert sum(end - start for start, end, _, _ in moved) == fewest
        # A ref whose weight did not change still rounds its exact share to a whole bucket,
        # so it may give or take one bucket (1 key in 2**32) as the others change; no more.
        for ref in fixed:
            assert sum(e - s for s, e, old, new in moved if ref in (old, new)) <= 1, ref
        rounding = {start for start, _, old, new in moved if old in fixed or new in fixed}
        # Anything else moves from a ref whose weight fell to one whose weight rose; so when
        # one ref rises and none other does, keys only move into it.
        for start, _, old, new in moved:
            if start not in rounding:
                assert weight_after[old] < weight_before[old], (old, new)
                assert weight_after[new] > weight_before[new], (old, new)
        if units_before == units_after:
            assert after.slices == before.slices

        # The sampled keys, as the router resolves them.
        resolved = router(Route("r1", None, split=after))
        now = [resolved.resolve({"customer": k}) for k in KEYS]
        for then, decision in zip(seen, now, strict=True):
            old, new = then.plugin_ref, decision.plugin_ref
            assert decision.bucket == then.bucket
            assert decision.bucket is not None
            assert new == ref_at(after, decision.bucket)
            if old != new:
                assert grown[old] < 0 < grown[new], (old, new)
                if decision.bucket not in rounding:
                    assert weight_after[old] < weight_before[old], (old, new)
                    assert weight_after[new] > weight_before[new], (old, new)
        split, seen = after, now


def test_split_canary_ramp_only_adds_keys_to_the_canary() -> None:
    """A worked example of the property above: 1% -> 5% -> 25% -> 100% on a canary."""
    split = salted(Split.new([(A, 99), (B, 1)]))
    on_canary = {k for k in KEYS if ref_at(split, routing.bucket(k, SALT)) == B}
    for weight in (5, 25, 100):
        split = Split.new([(A, 100 - weight), (B, weight)], previous=split)
        now = {k for k in KEYS if ref_at(split, routing.bucket(k, SALT)) == B}
        assert on_canary < now
        on_canary = now
    assert on_canary == set(KEYS)


def test_split_new_with_another_key_gets_a_new_salt() -> None:
    split = salted(Split.new([(A, 50), (B, 50)]))
    assert Split.new([(A, 40), (B, 60)], key="project", previous=split).salt != SALT
    assert Split.new([(A, 40), (B, 60)], previous=split).salt == SALT


# Observed share ----------------------------------------------------------------------------

SAMPLE = 20_000


@settings(max_examples=20, deadline=None)
@given(
    units=st.integers(2, 4).flatmap(lambda n: weight_units(n, 100)),
    salt=SALTS,
)
def test_split_observed_share_matches_weight(units: tuple[int, ...], salt: str) -> None:
    ramp = Ramp(REFS[: len(units)], 100, (units,))
    resolved = router(Route("r1", None, split=salted(Split.new(ramp.weights(units)), salt)))
    counts = Counter(
        resolved.resolve({"customer": f"customer-{i}"}).plugin_ref for i in range(SAMPLE)
    )
    for ref, weight in ramp.weights(units):
        p = weight / 100
        sigma = math.sqrt(p * (1 - p) / SAMPLE)
        assert abs(counts[ref] / SAMPLE - p) <= 5 * sigma + 1e-3, (ref, counts[ref])


# Hash scheme -------------------------------------------------------------------------------

STORED_SPLIT = {
    "key": "customer",
    "hash": "v1",
    "salt": SALT,
    "weights": [["webhook@2.0.0", 50.0], ["webhook@2.1.0", 50.0]],
    "slices": [[0, "webhook@2.0.0"], [2**31, "webhook@2.1.0"]],
}


def test_bucket_v1_known_answer() -> None:
    # Pinned on purpose: if this number changes, scheme v1 hashes differently, and every
    # customer of every split already made would move to another plugin version. A new
    # hashing must be a new scheme ("v2") that only new splits use.
    assert routing.bucket("customer-1", SALT, "v1") == 1444319845
    assert routing.bucket("acme", "00" * 8, "v1") == 2375362279
    stored = router(Route("r1", None, split=Split.from_dict(STORED_SPLIT)))
    assert stored.resolve({"customer": "customer-1"}).plugin_ref == A
    assert stored.resolve({"customer": "acme"}).plugin_ref == B


def test_split_from_dict_without_hash_reads_v1() -> None:
    split = Split.from_dict({k: v for k, v in STORED_SPLIT.items() if k != "hash"})
    assert split.scheme == "v1"
    assert split == Split.from_dict(STORED_SPLIT)
    assert split.to_dict() == STORED_SPLIT


def test_split_from_dict_refuses_unknown_hash_scheme() -> None:
    with pytest.raises(ConfigurationError, match=r"'v2'.*upgrade turnout"):
        Split.from_dict({**STORED_SPLIT, "hash": "v2"})


# Editing -----------------------------------------------------------------------------------


def test_with_route_numbers_new_routes() -> None:
    routes = with_route((), "customer", ["acme"], to=A)
    routes = with_route(routes, "plan", ["pro"], to=B)
    routes = with_route(routes, None, [], weights=[(A, 10), (B, 90)])
    assert [r.id for r in routes] == ["r1", "r2", "r3"]
    assert [r.selector for r in routes] == ["customer", "plan", None]
    assert without_route(routes, "r1")[0].id == "r2"
    assert with_route(without_route(routes, "r1"), "channel", ["beta"], to=C)[-1].id == "r4"


def test_with_route_repoints_same_selector_and_values_in_place() -> None:
    routes = with_route((), "customer", ["acme", "globex"], to=A)
    routes = with_route(routes, "plan", ["pro"], to=B)
    changed = with_route(routes, "customer", ["globex", "acme"], to=C)
    assert changed == (Route("r1", "customer", ("acme", "globex"), to=C), routes[1])


def test_with_route_repointing_a_split_keeps_its_salt() -> None:
    routes = with_route((), "plan", ["pro"], weights=[(A, 90), (B, 10)])
    changed = with_route(routes, "plan", ["pro"], weights=[(A, 50), (B, 50)])
    assert changed[0].id == "r1"
    assert changed[0].split is not None
    assert routes[0].split is not None
    assert changed[0].split.salt == routes[0].split.salt


def test_with_route_refuses_a_value_another_route_selects() -> None:
    routes = with_route((), "customer", ["acme", "globex"], to=A)
    routes = with_route(routes, "customer", ["initech"], to=B)
    with pytest.raises(UsageError, match=r"customer globex is already routed by r1"):
        with_route(routes, "customer", ["globex", "hooli"], to=C)
    with pytest.raises(UsageError, match=r"already routed by r2.*turnout route remove TARGET r2"):
        with_route(routes, "customer", ["hooli", "initech"], to=C)
    # Another selector may use the same word.
    assert with_route(routes, "project", ["acme"], to=C)[-1].id == "r3"


def test_with_route_keeps_one_split_on_everyone() -> None:
    routes = with_route((), "customer", ["acme"], to=A)
    routes = with_route(routes, None, [], weights=[(A, 10), (B, 90)])
    replaced = with_route(routes, None, [], weights=[(A, 20), (C, 80)])
    assert [r.id for r in replaced] == ["r1", "r2"]
    first, second = routes[1].split, replaced[1].split
    assert first is not None
    assert second is not None
    assert second.salt == first.salt
    assert second.weights == ((A, 20.0), (C, 80.0))


def test_without_route_refuses_unknown_id_naming_the_routes() -> None:
    routes = with_route((), "customer", ["acme"], to=A)
    routes = with_route(routes, "plan", ["pro"], to=B)
    with pytest.raises(
        UsageError, match=r"no route 'r7'.*r1 \(customer=acme -> webhook@2\.0\.0\), r2"
    ):
        without_route(routes, "r7")
    with pytest.raises(UsageError, match=r"no route 'r1'.*: none"):
        without_route((), "r1")
    assert without_route(routes, "r1") == (routes[1],)


def test_find_route() -> None:
    routes = with_route((), "customer", ["acme", "globex"], to=A)
    routes = with_route(routes, None, [], weights=[(A, 10), (B, 90)])
    assert find_route(routes, "customer", "globex") is routes[0]
    assert find_route(routes, None, None) is routes[1]
    with pytest.raises(
        UsageError, match=r"^there is no route for customer 'initech'; see: turnout route list"
    ):
        find_route(routes, "customer", "initech")
    with pytest.raises(UsageError, match=r"no route for plan 'acme'"):
        find_route(routes, "plan", "acme")
    with pytest.raises(UsageError, match=r"^there is no split on everyone;"):
        find_route(routes[:1], None, None)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param(
            {"selector": "region", "values": ("eu",), "to": A}, "not 'region'", id="selector"
        ),
        pytest.param(
            {"selector": "customer", "values": (), "to": A}, "at least one", id="no-values"
        ),
        pytest.param(
            {"selector": "customer", "values": ("acme", "acme"), "to": A}, "twice", id="twice"
        ),
        pytest.param({"selector": "customer", "values": ("ac\nme",), "to": A}, "invalid", id="ctl"),
        pytest.param({"selector": "plan", "values": ("\x00",), "to": A}, "invalid", id="nul"),
        pytest.param({"selector": "plan", "values": (" pro",), "to": A}, "invalid", id="space"),
        pytest.param({"selector": "plan", "values": ("pro ",), "to": A}, "invalid", id="space-end"),
        pytest.param({"selector": "plan", "values": ("",), "to": A}, "invalid", id="empty"),
        pytest.param({"selector": "plan", "values": ("x" * 201,), "to": A}, "invalid", id="long"),
        pytest.param({"selector": None, "to": A}, "needs a selector", id="to-everyone"),
        pytest.param({"selector": "plan", "values": ("pro",)}, "not both or neither", id="nowhere"),
    ],
)
def test_route_refuses_malformed(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        Route("r1", **fields)


def test_route_accepts_longest_value() -> None:
    assert Route("r1", "plan", ("x" * 200,), to=A).values == ("x" * 200,)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        pytest.param([(A, 100)], "at least two refs", id="one-ref"),
        pytest.param([(A, 50), (A, 50)], "each ref once", id="ref-twice"),
        pytest.param([(A, -1), (B, 101)], "webhook@2.0.0 must be a percentage", id="negative"),
        pytest.param([(A, 101), (B, -1)], "webhook@2.0.0 must be a percentage", id="over-100"),
        pytest.param([(A, math.nan), (B, 100)], "must be a percentage", id="nan"),
        pytest.param([(A, math.inf), (B, 0)], "must be a percentage", id="inf"),
        pytest.param([(A, 50), (B, 40)], "add up to 90, not 100", id="sum"),
    ],
)
def test_split_new_refuses_bad_weights(
    weights: list[tuple[PluginRef, float]], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        Split.new(weights)


@st.composite
def routes(draw: st.DrawFn) -> Route:
    """Any valid route: a pin or a split, with or without a selector."""
    route_id = f"r{draw(st.integers(1, 999))}"
    selector = draw(st.sampled_from([None, *SELECTORS]))
    values = (
        ()
        if selector is None
        else tuple(draw(st.lists(NAMES, min_size=1, max_size=4, unique=True)))
    )
    if selector is not None and draw(st.booleans()):
        return Route(route_id, selector, values, to=draw(st.sampled_from(REFS)))
    count = draw(st.integers(2, 4))
    ramp = Ramp(REFS[:count], draw(st.sampled_from([1, 100])), ())
    split = Split.new(
        ramp.weights(draw(weight_units(count, ramp.scale))), key=draw(st.sampled_from(SELECTORS))
    )
    return Route(route_id, selector, values, split=salted(split, draw(SALTS)))


@settings(max_examples=100, deadline=None)
@given(route=routes())
def test_route_round_trips_through_json(route: Route) -> None:
    stored = json.loads(json.dumps(route.to_dict()))
    assert Route.from_dict(stored) == route
    assert parse_routes(json.loads(json.dumps(route_dicts([route, route])))) == (route, route)


# Blast radius ------------------------------------------------------------------------------


def test_blast_radius_groups_moved_contexts() -> None:
    before = router()
    after = router(
        Route("r1", "customer", ("acme",), to=A),
        Route("r2", "plan", ("pro",), to=B),
    )
    contexts = [
        {"customer": "acme", "project": "apollo"},
        {"project": "apollo", "customer": "acme"},  # the same context again
        {"customer": "acme", "project": "gemini"},
        {"customer": "acme"},
        {"customer": "globex", "plan": "pro"},
        {"plan": "pro"},
        {"customer": "initech", "plan": "free"},  # stays on the default
        {},
    ]
    assert blast_radius(before, after, contexts) == [
        Move(str(DEFAULT), str(A), 3, {"acme"}, {"apollo", "gemini"}),
        Move(str(DEFAULT), str(B), 2, {"globex"}, set()),
    ]
    assert blast_radius(after, after, contexts) == []


def test_blast_radius_of_a_new_or_deleted_target() -> None:
    target = router(Route("r1", "customer", ("acme",), to=A))
    contexts = [{"customer": "acme", "project": "apollo"}, {"customer": "globex"}]
    assert blast_radius(None, target, contexts) == [
        Move(None, str(DEFAULT), 1, {"globex"}, set()),
        Move(None, str(A), 1, {"acme"}, {"apollo"}),
    ]
    assert [m.to_dict() for m in blast_radius(target, None, contexts)] == [
        {"from": str(DEFAULT), "to": None, "contexts": 1, "customers": ["globex"], "projects": []},
        {"from": str(A), "to": None, "contexts": 1, "customers": ["acme"], "projects": ["apollo"]},
    ]
