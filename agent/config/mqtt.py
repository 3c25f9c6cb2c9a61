"""The broker, its TLS and credentials, the Sparkplug B edge node and the metrics endpoint."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    Field,
    field_validator,
    model_validator,
)

from agent.config.types import _Model

# --- MQTT ------------------------------------------------------------------------------

class TlsConfig(_Model):
    """TLS toward the broker (``mqtts://``)."""

    ca_file: Path | None = Field(None, description="CA bundle that signed the broker's certificate; system store when absent")
    cert_file: Path | None = Field(None, description="client certificate (PEM) for certificate authentication")
    key_file: Path | None = Field(None, description="client private key (PEM)")

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


#: the forms a broker may be given in on the command line, for the one refusal sentence
BROKER_FORMS = "mqtt://host:port, mqtts://host:port, host:port or host"


def broker_url(text: str) -> str:
    """A broker as every command takes it (``--broker`` of run, check, demo and watch):
    ``mqtt://host:port``, ``mqtts://host:port``, ``host:port`` or ``host`` (MQTT on 1883),
    as an ``mqtt://`` or ``mqtts://`` URL. Raises ``ValueError`` with one sentence naming
    the forms."""
    url = text.strip()
    if "://" not in url:
        url = f"mqtt://{url}"
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or port == -1
            or parts.path not in ("", "/") or parts.query or parts.fragment):
        raise ValueError(f"{text!r} is not a broker address: give {BROKER_FORMS}")
    return url.rstrip("/")


class MqttConfig(_Model):
    """The broker the agent publishes to."""

    url: str = Field("mqtt://127.0.0.1:1883", description="mqtt://host:port or mqtts://host:port (TLS)")
    topic_root: str | None = Field(None, description="topic prefix R; default plantfloor/<site>")
    client_id: str | None = Field(None, description="MQTT client id; default plantfloor-<site>")
    qos: Literal[1] = Field(1, description="QoS of output messages: 1. A window leaves the outbox only once the broker acknowledged it with a success reason code (status and state are QoS 1 too). QoS 2 is not accepted: paho-mqtt cannot report a broker's refusal of a QoS 2 publish")
    version: Literal["5", "3.1.1"] = Field("5", description="MQTT protocol version")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive in seconds")
    username: str | None = Field(None, description="user name; the password comes from password_file or PLANTFLOOR_MQTT_PASSWORD")
    password_file: Path | None = Field(None, description="file holding the password (relative names are looked up in $CREDENTIALS_DIRECTORY first)")
    tls: TlsConfig | None = Field(None, description="TLS files; implied by mqtts://")
    max_inflight: int = Field(1000, ge=1, le=65000, description="QoS>0 messages awaiting acknowledgement at once")

    @field_validator("qos", mode="before")
    @classmethod
    def _qos(cls, v: object) -> object:
        if v == 2:
            raise ValueError("2 is not accepted: paho-mqtt does not report a broker's refusal "
                             "of a QoS 2 publish, so a refused window would leave the outbox unseen; "
                             "use 1 (delivery is at least once; subscribers keep one message per "
                             "line, epoch and seq)")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"{v!r} is not an mqtt:// or mqtts:// URL with a host")
        if parts.username or parts.password:
            raise ValueError("credentials do not belong in the URL: use username and "
                             "password_file (or PLANTFLOOR_MQTT_PASSWORD)")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError(f"{v!r} has an invalid port") from exc
        return v

    @field_validator("topic_root")
    @classmethod
    def _root(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "#+\0") or v.startswith("/") or v.endswith("/")):
            raise ValueError(f"{v!r} is not a valid topic prefix (no wildcards, no leading or trailing '/')")
        return v

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def uses_tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts" or self.tls is not None

    def password(self) -> str | None:
        """The password from ``password_file`` (credentials directory first) or the environment."""
        if self.password_file is not None:
            return resolve_secret_file(self.password_file).read_text(encoding="utf-8").strip()
        return os.environ.get("PLANTFLOOR_MQTT_PASSWORD")


def resolve_secret_file(path: Path) -> Path:
    """A relative secret name is looked up in systemd's ``$CREDENTIALS_DIRECTORY`` first."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and not path.is_absolute() and (Path(creds) / path).exists():
        return Path(creds) / path
    return path


# --- Sparkplug B ----------------------------------------------------------------------

#: what a Sparkplug id may not contain: the topic separator and wildcards (Sparkplug 3.0,
#: 4.1.1), and the NUL and control characters MQTT forbids or advises against in topics
_SPARKPLUG_FORBIDDEN = re.compile(r"[+/#\x00-\x1f\x7f-\x9f]")


def _sparkplug_id(value: str) -> str:
    bad = _SPARKPLUG_FORBIDDEN.search(value)
    if bad is not None:
        raise ValueError(f"{value!r} contains {bad.group(0)!r}: a Sparkplug id is a UTF-8 "
                         "string without '+', '/', '#' and control characters")
    if len(value.encode()) > 1024:
        raise ValueError("a Sparkplug id longer than 1024 bytes makes unwieldy topics")
    return value


SparkplugId = Annotated[str, Field(min_length=1), AfterValidator(_sparkplug_id)]


class SparkplugConfig(_Model):
    """The agent as a Sparkplug B 3.0 edge node (docs/sparkplug.md); each line is a device."""

    group_id: SparkplugId = Field(..., description="Sparkplug Group ID (e.g. the plant); no '+', '/', '#'")
    edge_node_id: SparkplugId = Field(..., description="Sparkplug Edge Node ID: unique per gateway within the group (two gateways with one id make host applications demand rebirths from both, endlessly)")
    primary_host_id: SparkplugId | None = Field(None, description="when set, births wait for this host application's STATE online, and the node disconnects and starts over when the host goes offline")
    client_id: str | None = Field(None, min_length=1, description="MQTT client id of the edge node's own connection; default <mqtt client id>-sparkplug")
    data_datatypes: bool = Field(False, description="repeat each metric's datatype in NDATA/DDATA for host applications that decode DATA without the birth (Eclipse Tahu's JavaScript decodePayload); off as the specification asks")



class SiteAckConfig(_Model):
    """The site service this gateway serves (``plantfloor rollup``, docs/scale-out.md): its
    windows stay in the state file until the site, not only the broker, has them."""

    topic: str = Field(..., min_length=1, description="the site's acknowledgement of this gateway, "
                                                      "S/rollup/ack/<gateway id in the roll-up's config>, "
                                                      "e.g. plantfloor/site/rollup/ack/gw1")
    timeout_s: float = Field(60.0, ge=1, le=86400, description="a window the broker took but the site has not "
                                                              "acknowledged this long after is published again "
                                                              "(then after twice as long, up to backoff_max_s)")
    backoff_max_s: float = Field(900.0, ge=1, le=86400, description="the longest wait between two re-publications "
                                                                   "of an unacknowledged window")

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if any(c in v for c in "#+\0"):
            raise ValueError(f"{v!r} is not a topic to subscribe to exactly (no wildcards)")
        return v


class MetricsConfig(_Model):
    """Prometheus endpoint (off unless configured)."""

    host: str = Field("127.0.0.1", description="bind address; keep it on loopback unless a proxy fronts it")
    port: int = Field(9464, ge=0, le=65535, description="TCP port of the /metrics endpoint (0 picks a free port)")
