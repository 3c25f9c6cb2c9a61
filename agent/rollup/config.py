"""The roll-up's configuration file: the site's plan, its gateways, the broker and the database.

The plan (``plant``, ``shifts``, ``timezone``) and the broker (``mqtt``) use the agent's
own models, so a site's figures come from the same definitions as a gateway's. Loading
goes through :func:`agent.config.load.load_model`: every error is one sentence naming the
file, the line and the key, and the CLI exits 2.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# the same rule as the agent's file: shifts of one site never overlap
from agent.config import (
    Identifier,
    MqttConfig,
    PlantConfig,
    Shift,
    TimeZoneName,
    resolve_secret_file,
)
from agent.config.board import BoardConfig
from agent.config.load import load_model
from agent.config.models import _check_shift_overlap
from agent.contract.errors import ConfigError

__all__ = [
    "DatabaseConfig",
    "GatewayConfig",
    "IngestConfig",
    "LeadershipConfig",
    "RollupConfig",
    "SitePublishConfig",
    "load_rollup_config",
    "replica_name",
]

TopicRoot = Annotated[str, Field(description="topic prefix: no wildcards, no leading or trailing '/'")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_root(v: str) -> str:
    if not v or any(c in v for c in "#+\0") or v.startswith("/") or v.endswith("/"):
        raise ValueError(f"{v!r} is not a valid topic prefix (no wildcards, no leading or trailing '/')")
    return v


class DatabaseConfig(_Model):
    """The PostgreSQL database every replica of the site writes to."""

    url: str = Field(..., description="libpq URI, e.g. postgresql://plantfloor@db.example:5432/plantfloor "
                                      "(?sslmode=verify-full&sslrootcert=... for TLS); never a password")
    password_file: Path | None = Field(None, description="file holding the password (relative names are looked up in "
                                                         "$CREDENTIALS_DIRECTORY first); else PGPASSWORD or ~/.pgpass")
    pool_size: int = Field(4, ge=2, le=64, description="connections in the pool of each replica (writers, queries)")
    connect_timeout_s: float = Field(10.0, gt=0, le=300, description="per connection attempt")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError(f"{v!r} is not a postgresql:// URI")
        if parts.password:
            raise ValueError("the password does not belong in the URL: use password_file "
                             "(or PGPASSWORD, ~/.pgpass)")
        return v

    def password(self) -> str | None:
        """The password from ``password_file`` (credentials directory first), or None (libpq's own)."""
        if self.password_file is None:
            return None
        return resolve_secret_file(self.password_file).read_text(encoding="utf-8").strip()


class GatewayConfig(_Model):
    """One gateway (one agent) of the site: where it publishes and which lines it has."""

    id: Identifier = Field(..., description="the gateway's name in the site figure and the tables")
    topic_root: TopicRoot = Field(..., description="the agent's mqtt.topic_root (R of its R/lines/<line>/output)")
    lines: tuple[Identifier, ...] = Field(..., min_length=1, description="the lines the agent publishes (its lines.*.id)")
    max_rate_per_hour: float = Field(3600.0, gt=0, le=1e7, description="the most units an hour any of these lines "
                                                                       "can build: a window with more than this "
                                                                       "rate allows over its length plus a day is "
                                                                       "rejected (kept in rejected_message)")

    @field_validator("topic_root")
    @classmethod
    def _root(cls, v: str) -> str:
        return _check_root(v)


class SitePublishConfig(_Model):
    """The site's plant figure."""

    interval_s: int = Field(60, ge=1, le=3600, description="the site's window, the same as every gateway's "
                                                          "publish.interval_s; divides an hour")
    grace_s: float = Field(30.0, ge=0, le=86400, description="how long after a window's end the figure waits for "
                                                            "lines that have not reported it; later windows re-publish it "
                                                            "with revision + 1")
    status_interval_s: int = Field(60, ge=1, le=3600, description="how often each replica republishes its status")

    @field_validator("interval_s")
    @classmethod
    def _divides_hour(cls, v: int) -> int:
        if 3600 % v:
            raise ValueError(f"{v} does not divide an hour (3600 s) into whole windows")
        return v


class IngestConfig(_Model):
    """The shared subscription and the batched inserts."""

    share_group: Identifier | None = Field(None, description="MQTT 5 shared subscription group; default plantfloor-rollup-<site>")
    batch_size: int = Field(500, ge=1, le=10000, description="most windows per insert transaction")
    batch_delay_s: float = Field(0.02, ge=0, le=5, description="how long a batch waits to fill once its first window arrived")
    receive_maximum: int = Field(1000, ge=1, le=65535, description="unacknowledged windows the broker may send at once "
                                                                  "(they are acknowledged after their commit)")
    session_expiry_s: int = Field(86400, ge=60, le=2**32 - 1, description="how long the broker keeps a replica's session "
                                                                          "(and the windows queued in it) while it is away")
    max_packet_bytes: int = Field(262_144, ge=4096, le=268_435_455, description="the largest MQTT packet a replica "
                                                                            "accepts (CONNECT's maximum packet "
                                                                            "size): the broker drops bigger ones "
                                                                            "for it; a window is about 1-2 kB")
    drain_idle_s: float = Field(2.0, gt=0, le=60, description="a session being drained (shutdown, or a dead replica's "
                                                             "adopted) is done after this long without a window")


class LeadershipConfig(_Model):
    """The one replica that publishes the figure, and the adoption of dead replicas' sessions."""

    lock_poll_s: float = Field(1.0, ge=0.05, le=60, description="how often a follower tries to become the leader")
    tick_s: float = Field(0.2, ge=0.01, le=60, description="how often the leader looks for new and late windows")
    adopt_interval_s: float = Field(5.0, ge=0.1, le=3600, description="how often a replica looks for a dead replica's "
                                                                      "session to drain")


class RollupConfig(_Model):
    """The roll-up's configuration file (``plantfloor rollup ROLLUPCONFIG``)."""

    site: Identifier
    timezone: TimeZoneName = Field(..., description="IANA time zone of the site, e.g. Asia/Tokyo")
    replica: Identifier | None = Field(None, description="this replica's name (unique per replica); default the host "
                                                         "name; --replica overrides")
    mqtt: MqttConfig = Field(..., description="the broker; topic_root is the site's root S (S/plant/output); "
                                              "client_id the prefix of each replica's <client_id>-<replica>")
    database: DatabaseConfig = Field(..., description="PostgreSQL")
    publish: SitePublishConfig = Field(SitePublishConfig(), description="the site figure")
    ingest: IngestConfig = Field(IngestConfig(), description="subscription and inserts")
    leadership: LeadershipConfig = Field(LeadershipConfig(), description="leader election and session adoption")
    plant: PlantConfig = Field(..., description="capacity and planned utilisation of the site")
    shifts: tuple[Shift, ...] = Field(..., min_length=1, description="the site's shift calendar")
    gateways: tuple[GatewayConfig, ...] = Field(..., min_length=1, description="the site's gateways")
    board: BoardConfig = Field(BoardConfig(), description="plantfloor board ROLLUPCONFIG: the site's read-only web board (docs/board.md)")

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def topic_root(self) -> str:
        """The site's root ``S``."""
        return self.mqtt.topic_root or f"plantfloor/{self.site}"

    @property
    def share_group(self) -> str:
        return self.ingest.share_group or f"plantfloor-rollup-{self.site}"

    @property
    def line_gateway(self) -> dict[str, str]:
        """Configured line -> its gateway."""
        return {line: gw.id for gw in self.gateways for line in gw.lines}

    def client_id(self, replica: str) -> str:
        """The MQTT client id of a replica (its persistent session)."""
        return f"{self.mqtt.client_id or f'plantfloor-rollup-{self.site}'}-{replica}"

    def filters(self) -> list[str]:
        """The shared subscriptions: each gateway's line windows and line shift reports."""
        return [f"$share/{self.share_group}/{gw.topic_root}/lines/+/{kind}"
                for gw in self.gateways for kind in ("output", "shift")]

    @model_validator(mode="after")
    def _cross(self) -> RollupConfig:
        if self.mqtt.version != "5":
            raise ValueError("mqtt.version: the roll-up needs MQTT 5 (shared subscriptions, "
                             "acknowledgement after commit, reason codes)")
        ids: set[str] = set()
        roots: dict[str, str] = {}
        lines: dict[str, str] = {}
        for i, gw in enumerate(self.gateways):
            if gw.id in ids:
                raise ValueError(f"gateways.{i}.id: duplicate gateway {gw.id!r}")
            ids.add(gw.id)
            if gw.topic_root in roots:
                raise ValueError(f"gateways.{i}.topic_root: {gw.topic_root!r} is already the root of "
                                 f"gateway {roots[gw.topic_root]!r}")
            if gw.topic_root == self.topic_root:
                raise ValueError(f"gateways.{i}.topic_root: {gw.topic_root!r} is the site's own root "
                                 "(mqtt.topic_root): the gateway's plant output would collide with the site's")
            roots[gw.topic_root] = gw.id
            for j, line in enumerate(gw.lines):
                if line in lines:
                    raise ValueError(f"gateways.{i}.lines.{j}: line {line!r} is already a line of gateway "
                                     f"{lines[line]!r} (line ids are unique across a site)")
                lines[line] = gw.id
        _check_shift_overlap(self.shifts)
        return self


def replica_name(cfg: RollupConfig, override: str | None = None) -> str:
    """``--replica``, else ``replica`` from the file, else the host name made an identifier."""
    if override is not None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", override):
            raise ConfigError(f"{override!r} is not a replica name (lower-case letters, digits, '-' "
                              "and '_')", key="--replica")
        return override
    if cfg.replica is not None:
        return cfg.replica
    host = re.sub(r"[^a-z0-9_-]+", "-", socket.gethostname().split(".")[0].lower()).strip("-_")
    return (host or f"pid{os.getpid()}")[:63]


def load_rollup_config(path: Path) -> tuple[RollupConfig, bytes]:
    """Load and validate a roll-up configuration file (errors name file, line and key)."""
    return load_model(path, RollupConfig)
