"""Where a checkpoint's images are, and their copies: the hosts a restarting host fetches a
rank's images from, the partner that copies a host's images after a commit (``replicas``),
and the images retention drops on every host that holds them.

A rank's images are on the host that dumped it (``RankImage.host``) and on each host that
fetched a complete, verified copy (``RankImage.copies``, recorded in the manifest once
copied). With a shared checkpoint store every host sees them anyway; a restart still names
the holders, and a host that finds them in its own store fetches nothing."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import structlog
from google.protobuf.json_format import Parse

from coordinator.control import Plane
from coordinator.registry import ALIVE
from coordinator.storage import CheckpointStore
from coordinator.store import AgentRecord, ImageDrop, Store
from crctl.errors import ConflictError, CrctlError
from crctl.v1 import control_pb2, coordinator_pb2

log = structlog.get_logger()

COPY_TIMEOUT = 600.0  # a partner's fetch of a host's images (GiBs at network speed)
DROP_TIMEOUT = 30.0
RETRY_AFTER = 60.0  # a copy or a drop that failed is tried again after this long (config)


def holders(image: control_pb2.RankImage) -> list[str]:
    """The hosts holding a complete copy of a rank's images: the one that dumped it first."""
    return list(dict.fromkeys([image.host, *image.copies]))


def holders_of(manifest: coordinator_pb2.Manifest) -> list[str]:
    """Every host holding images of some rank of a checkpoint, in name order."""
    return sorted({host for image in manifest.ranks for host in holders(image)})


def live_holders(image: control_pb2.RankImage, agents: Mapping[str, AgentRecord]) -> list[str]:
    """The holders of a rank's images whose agent is alive now, in holders' order."""
    return [h for h in holders(image) if h in agents and agents[h].state == ALIVE]


def image_holder(agent: AgentRecord) -> control_pb2.ImageHolder | None:
    """How to reach an agent's image server; None if it has none or is not alive."""
    if agent.state != ALIVE or not agent.image_endpoint:
        return None
    return control_pb2.ImageHolder(
        host=agent.host,
        endpoint=agent.image_endpoint,
        server_key=agent.image_server_key.encode("ascii"),
    )


def sources(
    image: control_pb2.RankImage, target: str, agents: Mapping[str, AgentRecord]
) -> list[control_pb2.ImageHolder]:
    """Where ``target`` fetches a rank's images it lacks: every other live holder, the host
    that dumped them first."""
    found = []
    for host in holders(image):
        agent = agents.get(host)
        holder = image_holder(agent) if agent is not None and host != target else None
        if holder is not None:
            found.append(holder)
    return found


def unreachable_ranks(
    manifest: coordinator_pb2.Manifest,
    rank_hosts: Mapping[int, str],
    agents: Mapping[str, AgentRecord],
) -> str:
    """The ranks of a checkpoint with no reachable copy (no live holder, and not on the host
    it restarts on, ``rank_hosts``), each with where its copies are, for a person; empty when
    every rank has one. (A live holder without an image server is counted: with a shared
    store the target reads the images itself; else its fetch fails, naming the holder.)"""
    missing = []
    for image in manifest.ranks:
        target = rank_hosts.get(image.rank, "")
        if target in holders(image) or live_holders(image, agents):
            continue
        where = ", ".join(f"{h} ({'lost' if h in agents else 'unknown'})" for h in holders(image))
        missing.append(f"rank {image.rank} (only on {where})")
    return "; ".join(missing)


def require_restorable(
    manifest: coordinator_pb2.Manifest,
    rank_hosts: Mapping[int, str],
    agents: Mapping[str, AgentRecord],
) -> None:
    """Refuse a restart a rank of which has no reachable copy (:func:`unreachable_ranks`)."""
    missing = unreachable_ranks(manifest, rank_hosts, agents)
    if missing:
        raise ConflictError(
            f"checkpoint {manifest.checkpoint} cannot be restored: no reachable copy of "
            f"{missing}; bring a host that holds them back, or restart from an older "
            "checkpoint (--checkpoint)",
            job=manifest.job,
            checkpoint=manifest.checkpoint,
        )


def intact_copy_may_remain(
    image: control_pb2.RankImage, read_on: str, agents: Mapping[str, AgentRecord]
) -> str:
    """Why a rank's images that a restart on ``read_on`` found unlike the manifest (in its own
    copy, or in every copy it fetched from the live holders) may still be intact elsewhere,
    for a person; empty when every copy was read. A holder's own copy stands for itself only;
    a host that holds none read the shared store, or fetched from every live holder."""
    others = [host for host in holders(image) if host != read_on]
    if read_on in holders(image) and others:
        return f"its copy on {read_on} differs; another is on {', '.join(others)}"
    live = live_holders(image, agents)
    unasked = [host for host in others if host not in live]
    if unasked:
        return f"{', '.join(unasked)} (not reachable now) may hold an intact copy"
    return ""


def partners(dumped_on: Sequence[str], candidates: Sequence[str]) -> dict[str, str]:
    """Each host that dumped ranks -> the host that keeps a copy of its images: the next of
    ``candidates`` (the live hosts with an image server, in name order) after it, as SCR pairs
    partner nodes. A host with no other candidate has no partner."""
    ring = sorted(set(candidates) | set(dumped_on))
    chosen: dict[str, str] = {}
    for host in sorted(set(dumped_on)):
        start = ring.index(host)
        for step in range(1, len(ring)):
            other = ring[(start + step) % len(ring)]
            if other in candidates and other != host:
                chosen[host] = other
                break
    return chosen


class ImageCopies:
    """Copies after a commit and drops at retirement, in the background (never on a
    checkpoint's critical path); the manifest (database and manifest.json) records each copy
    once its host verified it."""

    def __init__(
        self,
        *,
        store: Store,
        files: CheckpointStore,
        plane: Plane,
        agents: Callable[[], Mapping[str, AgentRecord]],
        replicas: int,
        retry_after: float = RETRY_AFTER,
    ) -> None:
        self._store = store
        self._files = files
        self._plane = plane
        self._agents = agents
        self._replicas = replicas
        self._retry_after = retry_after
        self._tasks: set[asyncio.Task[None]] = set()
        self._dropping: set[tuple[str, str]] = set()  # (host, checkpoint) asked to drop
        self._drop_failed_at: dict[tuple[str, str], float] = {}  # the loop's time
        self._copying: set[str] = set()  # checkpoints being copied
        self._failed_partners: dict[str, set[str]] = {}  # checkpoint -> who failed its copy
        # Checkpoints a rank of which has no copy yet -> when the last try ended (the loop's
        # time); those a coordinator that restarted finds in the store are due at once.
        self._uncopied: dict[str, float] = (
            dict.fromkeys(self._latest_uncopied(), -math.inf) if replicas > 0 else {}
        )

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def after_commit(self, checkpoint: str) -> None:
        if self._replicas > 0:
            self._start_copy(checkpoint)

    def _start_copy(self, checkpoint: str) -> None:
        self._copying.add(checkpoint)
        self._spawn(self._copy(checkpoint), f"copy-{checkpoint}")

    async def _copy(self, checkpoint: str) -> None:
        try:
            complete = await self.replicate(checkpoint)
        finally:
            self._copying.discard(checkpoint)
        if complete:
            self._uncopied.pop(checkpoint, None)
        else:
            self._uncopied[checkpoint] = asyncio.get_running_loop().time()

    def copy_again(self) -> None:
        """Copy again, RETRY_AFTER (``retry_after``) after the last try, each job's latest
        checkpoint a rank of which has no copy (its partner was down or failed the copy, or
        no other host was up); called by the sweeper. A coordinator that restarted found them
        in the store when it started."""
        now = asyncio.get_running_loop().time()
        for checkpoint, tried_at in list(self._uncopied.items()):
            if checkpoint in self._copying or now - tried_at < self._retry_after:
                continue
            record = self._store.checkpoint(checkpoint, manifest=False)
            if record is None or record.state != "committed":
                del self._uncopied[checkpoint]  # retired or damaged since
                self._failed_partners.pop(checkpoint, None)
                continue
            self._start_copy(checkpoint)

    def _latest_uncopied(self) -> list[str]:
        found = []
        for job in self._store.jobs():
            if not job.latest_checkpoint:
                continue
            record = self._store.checkpoint(job.latest_checkpoint)
            if record is not None and record.manifest:
                manifest = Parse(record.manifest, coordinator_pb2.Manifest())
                if any(not image.copies for image in manifest.ranks):
                    found.append(record.checkpoint)
        return found

    async def replicate(self, checkpoint: str) -> bool:
        """Each host's images fetched by its partner; the copies recorded. Whether every
        rank has a copy now."""
        record = self._store.checkpoint(checkpoint)
        if record is None or record.manifest is None:
            return True  # retired: nothing left to copy
        manifest = Parse(record.manifest, coordinator_pb2.Manifest())
        agents = self._agents()
        live = [h for h, a in agents.items() if image_holder(a) is not None]
        dumped_on = sorted({image.host for image in manifest.ranks})
        # A partner that failed this checkpoint's copy before is passed over for the next
        # live host, when there is one.
        failed_before = self._failed_partners.pop(checkpoint, set())
        pairs = partners(dumped_on, live) | partners(
            dumped_on, [h for h in live if h not in failed_before]
        )
        logger = log.bind(job=record.job, checkpoint=checkpoint, phase="copy")
        for host in dumped_on:
            if host not in pairs:
                logger.warning("checkpoint_copy_skipped", host=host, reason="no partner host")

        async def copy(host: str, partner: str) -> tuple[str, list[int]]:
            order = control_pb2.CoordinatorMessage()
            body = order.copy_images
            body.job, body.checkpoint = record.job, checkpoint
            body.checkpoint_dir = record.directory
            for image in manifest.ranks:
                if image.host == host and not image.copies and partner not in holders(image):
                    body.ranks.add(rank=image.rank, image=image).sources.extend(
                        sources(image, partner, agents)
                    )
            if not body.ranks:
                return partner, []
            try:
                reply = await self._plane.request(partner, order, COPY_TIMEOUT)
            except CrctlError as exc:
                logger.warning(
                    "checkpoint_copy_failed", host=partner, source=host, reason=exc.message
                )
                self._failed_partners.setdefault(checkpoint, set()).add(partner)
                return partner, []
            result = reply.images_copied
            if reply.WhichOneof("body") != "images_copied" or not result.ok:
                why = result.reason or reply.order_failed.reason or "unexpected reply"
                logger.warning("checkpoint_copy_failed", host=partner, source=host, reason=why)
                self._failed_partners.setdefault(checkpoint, set()).add(partner)
            else:
                logger.info(
                    "checkpoint_copied",
                    host=partner,
                    source=host,
                    ranks=list(result.ranks),
                    bytes=result.bytes,
                    seconds=round(result.seconds, 3),
                )
            return partner, list(result.ranks) if result.ok else []

        done = await asyncio.gather(*(copy(h, p) for h, p in pairs.items()))
        copied = {rank: partner for partner, ranks in done for rank in ranks}
        return self._record(checkpoint, copied)

    def _record(self, checkpoint: str, copied: Mapping[int, str]) -> bool:
        """Add the copies to the manifest, read again now (retention may have retired it);
        whether every rank has a copy now."""
        record = self._store.checkpoint(checkpoint)
        if record is None or record.manifest is None:
            return True
        manifest = Parse(record.manifest, coordinator_pb2.Manifest())
        added = False
        for image in manifest.ranks:
            host = copied.get(image.rank)
            if host is not None and host not in holders(image):
                image.copies.append(host)
                added = True
        if added:
            folder = self._files.directory(record.job, checkpoint)
            self._store.update_manifest(checkpoint, self._files.write_manifest(folder, manifest))
        return all(image.copies for image in manifest.ranks)

    def drop_retired(self) -> None:
        """Ask each live host that still holds images of retired checkpoints (the store's
        ``image_drops``, recorded when retention deleted them) to remove them, and cross off
        each drop a host carried out. Called after retention and by the sweeper: a host down
        at retirement drops them once it is back, one whose drop failed is asked again after
        ``retry_after``; one ask per host and checkpoint at a time."""
        agents = self._agents()
        now = asyncio.get_running_loop().time()
        for drop in self._store.image_drops():
            key = (drop.host, drop.checkpoint)
            agent = agents.get(drop.host)
            if key in self._dropping or agent is None or agent.state != ALIVE:
                continue
            if now - self._drop_failed_at.get(key, -self._retry_after) < self._retry_after:
                continue
            self._dropping.add(key)
            self._spawn(self._drop(drop), f"drop-{drop.checkpoint}-{drop.host}")

    async def _drop(self, drop: ImageDrop) -> None:
        key = (drop.host, drop.checkpoint)
        order = control_pb2.CoordinatorMessage()
        order.drop_images.job, order.drop_images.checkpoint = drop.job, drop.checkpoint
        order.drop_images.checkpoint_dir = drop.directory
        try:
            reply = await self._plane.request(drop.host, order, DROP_TIMEOUT)
            if reply.WhichOneof("body") != "images_dropped":
                raise CrctlError(reply.order_failed.reason or "unexpected reply")
        except CrctlError as exc:
            self._drop_failed_at[key] = asyncio.get_running_loop().time()
            log.warning(
                "checkpoint_images_not_dropped",
                job=drop.job,
                checkpoint=drop.checkpoint,
                host=drop.host,
                reason=exc.message,
            )
            return
        finally:
            self._dropping.discard(key)
        self._drop_failed_at.pop(key, None)
        self._store.image_dropped(drop.host, drop.checkpoint)
        log.info(
            "checkpoint_images_dropped", job=drop.job, checkpoint=drop.checkpoint, host=drop.host
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
