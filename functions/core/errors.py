"""The failure vocabulary shared by the stages and the adapters behind their ports.

The split decides how Knative treats an event: a `PermanentError` is answered 4xx (not
retried; it goes to the dead-letter sink and, when an experiment is at fault, into its
status; an `InvalidEventError` is the event's fault and changes no status),
a `TransientError` is answered 5xx so the broker retries it. Adapters translate their
libraries' exceptions into these; the stages never see an HTTP or client exception.
"""

from __future__ import annotations


class ArbiterError(Exception):
    """Base of everything a stage may raise on purpose."""


class PermanentError(ArbiterError):
    """Retrying will not help: a bad spec, a bad event, a missing metric."""


class InvalidEventError(PermanentError):
    """The event itself is refused: malformed, without the experiment's uid and iteration, or
    saying what the status does not record. The experiment it names is not at fault, so its
    status is left alone (anyone who can post to the broker could otherwise end it)."""


class TransientError(ArbiterError):
    """Worth retrying: an API server or Prometheus unreachable or overloaded."""


class NotFoundError(PermanentError):
    """The object the event or the spec names does not exist (any more)."""


class ConflictError(TransientError):
    """A conditional write lost a race: the object changed since it was read."""
