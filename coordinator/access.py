"""Who may do what to a job, and the audit trail of every call that changes something.

A job belongs to the user who launched its first rank. Its owner and the admins (root, and the
users and groups the configuration names in ``admin_users`` / ``admin_groups``) may inspect,
checkpoint, restart, verify and kill it; anyone else is refused with PERMISSION_DENIED naming
the owner. Listing shows a user their own jobs; admins see all. Every mutating call, allowed or
refused, is logged as an ``audit`` event with the caller's identity."""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from coordinator.store import JobRecord
from crctl.errors import PermissionDeniedError
from crctl.identity import Identity

log = structlog.get_logger()


@dataclass(frozen=True)
class AccessPolicy:
    admin_uids: frozenset[int] = frozenset()
    admin_gids: frozenset[int] = frozenset()

    def is_admin(self, caller: Identity) -> bool:
        if caller.root or caller.uid in self.admin_uids:
            return True
        return bool(self.admin_gids & {caller.gid, *caller.groups})

    def may_see(self, caller: Identity, job: JobRecord) -> bool:
        return job.owner_uid == caller.uid or self.is_admin(caller)

    def require(self, caller: Identity, job: JobRecord, action: str) -> None:
        """Refuse ``action`` on ``job`` unless the caller owns it or is an admin."""
        if self.may_see(caller, job):
            return
        raise PermissionDeniedError(
            f"permission denied: {caller} may not {action} job {job.job}: it belongs to "
            f"{job.owner} "
            f"(uid {job.owner_uid}); only its owner and the coordinator's admins may",
            job=job.job,
        )


def authorized(
    policy: AccessPolicy, caller: Identity, record: JobRecord, action: str, *, mutating: bool
) -> JobRecord:
    """``record``, if the caller may ``action`` it; mutating calls audited, allowed or not."""
    try:
        policy.require(caller, record, action)
    except PermissionDeniedError as exc:
        if mutating:
            audit(caller, action, record.job, allowed=False, reason=exc.message)
        raise
    if mutating:
        audit(caller, action, record.job, allowed=True)
    return record


def audit(caller: Identity, action: str, job: str, *, allowed: bool, reason: str = "") -> None:
    """One line per mutating call, allowed or refused: who, what, on which job."""
    log.info(
        "audit",
        caller=caller.name,
        uid=caller.uid,
        gid=caller.gid,
        action=action,
        job=job,
        allowed=allowed,
        reason=reason,
    )
