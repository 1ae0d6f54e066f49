"""P2: a release through a warm isolated worker, against the same release inline.

Both targets point at ``noop@1.0.0`` in one registry (SQLite file, WAL, synchronous NORMAL):
``noop-inline`` runs the copy in turnout's environment in this process, ``noop-process`` the
store's copy in a warm worker. Then the warm round trip alone, against a raw JSON request and
answer over pipes between two processes (``rawpipe.RawPipe``), the floor of any worker protocol.
"""

from __future__ import annotations

from functools import partial

from harness import Plan, Report, alternate, describe, timed_batch
from rawpipe import RawPipe
from world import NOOP_REF, RELEASE_ARGS, World

from turnout.worker import WorkerReleaser

RELEASE = (
    "Turnout.release: check key/context, resolve from the in-memory routing snapshot, "
    "fingerprint, the cached releaser (config validated once per target revision), claim "
    "(revision SELECT + INSERT, one commit), turnout_release under the retry policy, finish "
    "(UPDATE, commit)"
)


def run(world: World, plan: Plan, report: Report) -> None:
    n = plan.batch(120)
    samples = alternate(
        {
            "p2.inline": partial(timed_batch, partial(world.release, "noop-inline"), n),
            "p2.process": partial(timed_batch, partial(world.release, "noop-process"), n),
        },
        plan,
    )
    report.record(
        "P2",
        samples,
        describe(
            [
                ("p2.inline", "no-op release, inline", "floor", n, RELEASE),
                (
                    "p2.process",
                    "no-op release, warm worker (store env)",
                    "candidate",
                    n,
                    RELEASE + "; turnout_release is one round trip to the worker",
                ),
            ]
        ),
    )
    report.compare("P2", "p2.process", "p2.inline", 1.25)

    releaser = world.turnout._releaser(NOOP_REF, "process")
    assert isinstance(releaser, WorkerReleaser)
    worker = releaser._take()  # its own warm worker; the release rows start another
    raw = RawPipe()
    message = {"op": "release", "args": RELEASE_ARGS, "nonce": "0123456789abcdef"}
    m = plan.batch(2000)
    try:
        samples = alternate(
            {
                "p2.raw": partial(timed_batch, partial(raw.call, message), m),
                "p2.rt_release": partial(
                    timed_batch, partial(releaser.release, **RELEASE_ARGS, timeout=60.0), m
                ),
                "p2.rt_probe": partial(
                    timed_batch,
                    partial(worker.call, "probe", {"idempotency_key": "k"}, 60.0),
                    m,
                ),
            },
            plan,
        )
    finally:
        raw.close()
        releaser._give_back(worker)
    report.record(
        "P2",
        samples,
        describe(
            [
                (
                    "p2.raw",
                    "raw JSON request/answer over pipes",
                    "floor",
                    m,
                    "encode, write, read, decode on both sides; blocking reads, no threads",
                ),
                (
                    "p2.rt_release",
                    "warm round trip: WorkerReleaser.release",
                    "candidate",
                    m,
                    "frame + poll + write, worker runs the turnout_release hook and checks the "
                    "result, nonce on stderr, answer read, output thread hands over the nonce",
                ),
                (
                    "p2.rt_probe",
                    "warm round trip: WorkerProcess.call('probe')",
                    "candidate",
                    m,
                    "the same exchange with a trivial op (no hook implemented: no plugin code)",
                ),
            ]
        ),
    )
    report.compare("P2", "p2.rt_release", "p2.raw", 0.2e-3, kind="absolute")
    report.compare("P2", "p2.rt_probe", "p2.raw", 0.2e-3, kind="absolute")
