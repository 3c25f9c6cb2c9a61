"""The end-to-end acknowledgement: the site tells each gateway what it has committed.

A broker acknowledges a window when it has taken it, not when the site has it: Mosquitto
2.0 keeps no shared subscription across its own restart, so a window published after the
broker is back and before a replica has subscribed again reaches nobody, and the broker
may still answer 0x00 (another client subscribes to the same topic). Only the site can say
what it has. After every commit the writer moves each line's progress (the run
``first..seq`` of the line's epoch committed without a gap, ``plantfloor.line_progress``) and
this publisher sends, for every gateway whose progress moved, the retained QoS 1
``S/rollup/ack/<gateway>`` (:class:`~agent.rollup.payloads.SiteAck`). An agent configured
with ``site_ack`` keeps its windows until they are covered, and re-publishes the rest.

Publishing is coalesced: gateways noted while a round is being published go out in the
next round. A round that fails (broker away) keeps its gateways for the next one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from agent.contract.errors import PlantfloorError
from agent.contract.payloads import encode
from agent.outputs.mqtt.publisher import Publisher
from agent.rollup.database import Database
from agent.rollup.payloads import LineAck, SiteAck

__all__ = ["AckPublisher", "ack_topic"]

log = logging.getLogger("plantfloor.rollup.ack")

#: how long a failed round waits before trying again
_RETRY_S = 1.0


def ack_topic(site_root: str, gateway: str) -> str:
    """``S/rollup/ack/<gateway>``."""
    return f"{site_root}/rollup/ack/{gateway}"


class AckPublisher:
    """Publishes the acknowledgement of the gateways :meth:`note` names."""

    def __init__(self, db: Database, publisher: Publisher, *, site: str, site_root: str,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._db = db
        self._publisher = publisher
        self._site = site
        self._root = site_root
        self._wall = wall
        self._due: set[str] = set()
        self._wake = asyncio.Event()
        self.published = 0

    def note(self, gateways: set[str]) -> None:
        """The progress of these gateways' lines moved (called by the writer after a commit)."""
        if gateways:
            self._due |= gateways
            self._wake.set()

    async def run(self) -> None:
        """Until cancelled: publish what was noted, a round at a time."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            due, self._due = self._due, set()
            try:
                for gateway in sorted(due):
                    await self.publish(gateway)
                    due.discard(gateway)
            except (PlantfloorError, OSError) as exc:
                log.debug("acknowledgement not published yet: %s", exc)
                self._due |= due
                self._wake.set()
                await asyncio.sleep(_RETRY_S)

    async def publish(self, gateway: str) -> SiteAck:
        """Read one gateway's progress and publish it (retained)."""
        lines = await self._db.progress(self._site, gateway)
        ack = SiteAck(site=self._site, gateway=gateway, ts=self._wall(),
                      lines={line: LineAck(epoch=epoch, first=first, seq=seq)
                             for line, (epoch, first, seq) in sorted(lines.items())})
        await self._publisher.publish(ack_topic(self._root, gateway), encode(ack), qos=1, retain=True)
        self.published += 1
        return ack
