"""Every error turnout raises, and the exit code each one maps to.

One root, :class:`TurnoutError`. Each subclass also inherits the nearest built-in, carries the
facts as attributes and maps to exactly one CLI exit code (``exit_code``)::

    TurnoutError (Exception)                          1
    ├── UsageError (ValueError)                       2  bad input from the caller
    │   ├── InvalidPluginRefError                     2  not an exact `id@version` pin
    │   └── InvalidKeyError                           2  malformed idempotency key
    ├── ConfigurationError                           78  the setup is wrong
    │   ├── UnknownTargetError (LookupError)         78
    │   ├── PluginNotInstalledError (LookupError)    78  that version is not installed
    │   ├── PluginLoadError (ImportError)            78  the plugin's code failed to import
    │   ├── ConfigRejectedError (ValueError)         78  the plugin refused the config
    │   ├── SecretNotFoundError (LookupError)        78  an `env:` / `file:` reference failed
    │   ├── RelativeArtifactError                    78  a replay of a relative path
    │   ├── RegistryNotFoundError (LookupError)      78  no SQLite registry at that path
    │   └── DatabaseNotMigratedError                 78
    ├── RegistryUnavailableError (ConnectionError)   75  the database cannot be reached
    ├── PluginInstallError                            1  an install into the store failed
    ├── WorkerCrashedError (ConnectionError)         75  a worker died mid-call (transient)
    ├── WorkerTimeoutError (TimeoutError)            75  a call passed its deadline (transient)
    ├── StaleRevisionError                           75  an edit based on an old revision
    ├── KeyMismatchError                             65  same key, different request
    ├── ReleaseInProgressError                       75  same key, still running elsewhere
    ├── LeaseLostError                               75  taken over after this lease expired
    └── ReleaseFailedError                            1  the releaser failed permanently
        ├── TransientReleaseError                    75  failed transiently, retries spent
        │                                                 (the same key again resumes it)
        └── ReleaseUnknownError                      75  may or may not have deployed

Exit codes follow ``sysexits.h``: 65 data error, 75 temporary failure (a job runner should retry
later), 78 configuration error.

Beside the tree, :class:`Interrupted` (a ``BaseException``, as ``KeyboardInterrupt`` is, 75) is
what the CLI raises when SIGTERM's grace period runs out mid-release.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from turnout.releases import ReleaseRecord

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DATAERR = 65
EXIT_TEMPFAIL = 75
EXIT_CONFIG = 78


class TurnoutError(Exception):
    """The root of every error turnout raises on purpose."""

    exit_code: ClassVar[int] = EXIT_FAILED

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as it is, without calling __init__ again (whose arguments differ per class):
        # errors cross process boundaries (Celery results, multiprocessing) intact.
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(cls: type[TurnoutError], args: tuple[Any, ...], state: dict[str, Any]) -> TurnoutError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class UsageError(TurnoutError, ValueError):
    """The caller passed something malformed; fix the call."""

    exit_code = EXIT_USAGE


class InvalidPluginRefError(UsageError):
    """A plugin ref is not an exact pin such as ``webhook@2.0.1``."""

    def __init__(self, ref: str, reason: str) -> None:
        self.ref = ref
        super().__init__(
            f"invalid plugin ref {ref!r}: {reason}; write an exact pin such as 'webhook@2.0.1'"
        )


class InvalidKeyError(UsageError):
    """An idempotency key is empty, too long or holds characters outside the allowed set."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid idempotency key: {reason}")


class ConfigurationError(TurnoutError):
    """The registry or the installed plugins are set up wrong; retrying will not help.

    ``plugin_ref`` names the plugin version concerned, when there is one: the version the
    error is about, or the version the routing had chosen for the release it refused.
    """

    exit_code = EXIT_CONFIG
    plugin_ref: str | None = None


class RelativeArtifactError(ConfigurationError):
    """A release recorded its artifact as a relative path (before paths were recorded
    absolute): from another folder the same name could be another file."""

    def __init__(self, release_id: str, artifact: str) -> None:
        self.release_id = release_id
        self.artifact = artifact
        super().__init__(
            f"release {release_id} recorded its artifact as the relative path {artifact!r}, "
            "which could name another file from here; release it again with turnout release "
            "and the artifact's absolute path"
        )


class UnknownTargetError(ConfigurationError, LookupError):
    """No target of that name exists in the registry."""

    def __init__(self, target: str) -> None:
        self.target = target
        super().__init__(
            f"unknown target {target!r}; list targets with: turnout target list, "
            f"or create it with: turnout target set {target} PLUGIN@VERSION"
        )


class PluginNotInstalledError(ConfigurationError, LookupError):
    """The exact plugin version a target names cannot be found."""

    def __init__(self, plugin_ref: str, detail: str, fix: str) -> None:
        self.plugin_ref = plugin_ref
        super().__init__(f"{detail}; {fix}")


class PluginLoadError(ConfigurationError, ImportError):
    """The plugin's entry point could not be loaded (import error, missing dependency)."""

    def __init__(self, plugin_ref: str, distribution: str, reason: str) -> None:
        self.plugin_ref = plugin_ref
        self.distribution = distribution
        super().__init__(
            f"plugin {plugin_ref} (distribution {distribution}) failed to load: {reason}"
        )


class ConfigRejectedError(ConfigurationError, ValueError):
    """A plugin's ``turnout_validate_config`` refused a target's configuration."""

    def __init__(self, plugin_ref: str, reason: str, target: str | None = None) -> None:
        self.plugin_ref = plugin_ref
        self.target = target
        where = f"target {target!r}: " if target else ""
        super().__init__(f"{where}{plugin_ref} rejected the config: {reason}")


class SecretNotFoundError(ConfigurationError, LookupError):
    """A config value references a secret (``env:NAME``, ``file:PATH``) that cannot be read."""

    def __init__(self, field: str, reference: str, reason: str) -> None:
        self.field = field
        self.reference = reference
        super().__init__(f"config {field!r}: secret reference {reference!r} {reason}")


class DatabaseNotMigratedError(ConfigurationError):
    """The registry database is missing tables or lags behind the code's migrations."""

    def __init__(self, url: str, current: str | None, head: str) -> None:
        self.url = url
        self.current = current
        self.head = head
        at = f"at revision {current}" if current else "not initialised"
        super().__init__(
            f"registry {url} is {at}, this turnout needs {head}; run: turnout db upgrade"
        )


class RegistryNotFoundError(ConfigurationError, LookupError):
    """A SQLite registry path holds no registry: no such file (a command that only uses the
    registry never creates one), a folder, or a file that is not a SQLite database."""

    def __init__(self, path: str, what: str) -> None:
        self.path = path
        super().__init__(f"no registry at {path}: {what}")


class RegistryUnavailableError(TurnoutError, ConnectionError):
    """The registry database could not be reached or written."""

    exit_code = EXIT_TEMPFAIL


class PluginInstallError(TurnoutError):
    """Installing a plugin version into the store failed; nothing was installed."""


class WorkerCrashedError(TurnoutError, ConnectionError):
    """A worker process died during a call (exit, signal, segfault); transient by the rule."""

    exit_code = EXIT_TEMPFAIL

    def __init__(self, plugin_ref: str, how: str, output: str = "") -> None:
        self.plugin_ref = plugin_ref
        self.how = how
        self.output = output
        super().__init__(f"the worker for {plugin_ref} {how}")


class WorkerTimeoutError(TurnoutError, TimeoutError):
    """A call passed its deadline; the worker's process group was terminated."""

    exit_code = EXIT_TEMPFAIL

    def __init__(self, plugin_ref: str, timeout: float, output: str = "") -> None:
        self.plugin_ref = plugin_ref
        self.timeout = timeout
        self.output = output
        super().__init__(
            f"{plugin_ref} did not answer within {timeout:g}s; its worker's process group "
            "was terminated"
        )


class StaleRevisionError(TurnoutError):
    """A target edit was based on a revision that is no longer the current one; nothing changed."""

    exit_code = EXIT_TEMPFAIL

    def __init__(self, target: str, expected: int, current: int) -> None:
        self.target = target
        self.expected = expected
        self.current = current
        super().__init__(
            f"target {target!r} is at revision {current}, not {expected}: someone changed it "
            f"since; nothing changed. Review it (turnout history {target}) and try again with "
            f"--expect-revision {current}"
        )


class KeyMismatchError(TurnoutError):
    """An idempotency key was reused for a different request; nothing ran."""

    exit_code = EXIT_DATAERR

    def __init__(self, target: str, key: str, release_id: str, differs: list[str]) -> None:
        self.target = target
        self.key = key
        self.release_id = release_id
        self.differs = differs
        super().__init__(
            f"idempotency key {key!r} on target {target!r} was used by release {release_id} "
            f"for a different request (different {', '.join(differs)}); nothing ran. "
            "Use a new key for a new release."
        )


class ReleaseInProgressError(TurnoutError):
    """Another caller holds the claim on this key and is still running it; nothing ran."""

    exit_code = EXIT_TEMPFAIL

    def __init__(self, target: str, key: str, release_id: str) -> None:
        self.target = target
        self.key = key
        self.release_id = release_id
        super().__init__(
            f"release {release_id} (target {target!r}, key {key!r}) is still in progress "
            "elsewhere; nothing ran. Ask again later for its outcome."
        )


class LeaseLostError(TurnoutError):
    """This caller's claim expired and another caller took the release over; nothing written."""

    exit_code = EXIT_TEMPFAIL

    def __init__(self, release_id: str, status: str) -> None:
        self.release_id = release_id
        super().__init__(
            f"release {release_id} was taken over by another runner after this one's lease "
            f"expired, so its outcome ({status}) was not recorded; the other runner's stands. "
            f"See: turnout releases show {release_id}"
        )


class ReleaseFailedError(TurnoutError):
    """The releaser failed; the release is recorded with its error."""

    def __init__(self, release: ReleaseRecord) -> None:
        self.release = release
        super().__init__(
            f"release {release.id} to {release.target} with {release.plugin_ref} failed "
            f"after {release.attempts} attempt(s): {release.error}"
        )


class TransientReleaseError(ReleaseFailedError):
    """The releaser failed transiently on every attempt (or timed out); a later call with the
    same key resumes a transient failure with more attempts, and may succeed."""

    exit_code = EXIT_TEMPFAIL


class ReleaseUnknownError(ReleaseFailedError):
    """A runner died mid-call and nothing can tell whether the release deployed."""

    exit_code = EXIT_TEMPFAIL

    def __init__(self, release: ReleaseRecord) -> None:
        self.release = release
        TurnoutError.__init__(
            self,
            f"release {release.id} to {release.target} with {release.plugin_ref} (key "
            f"{release.idempotency_key!r}) may or may not have deployed: {release.error}. "
            f"Check whether {release.target} has {release.artifact}, then record it: "
            f"turnout reconcile {release.id} --as succeeded|failed",
        )


class Interrupted(BaseException):
    """The process was told to stop (SIGTERM) and its grace period ran out mid-release.

    Raised by the CLI's SIGTERM handling (``TURNOUT_TERM_GRACE``) in the main thread. A
    ``BaseException``, as ``KeyboardInterrupt`` is: a plugin's ``except Exception`` does not
    swallow it and no retry policy retries it. A release it stops after its claim is recorded
    ``unknown`` (its call may have deployed): asking again with the same key, or
    ``turnout reconcile``, takes it over and asks the plugin's probe.
    """

    exit_code: ClassVar[int] = EXIT_TEMPFAIL

    def __init__(self, grace: float | None, *, midway: bool = True) -> None:
        self.grace = grace
        """Seconds the release under way was given; ``None`` when a second SIGTERM cut it."""
        self.midway = midway
        """True when a release was under way (and is recorded ``unknown``); false when a
        command of several releases stopped between two of them."""
        if not midway:
            message = "stopped by SIGTERM between two releases"
        elif grace is None:
            message = "stopped by a second SIGTERM"
        else:
            message = f"stopped by SIGTERM after its grace period of {grace:g} s"
        super().__init__(message)
