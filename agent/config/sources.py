"""PLC endpoints: Modbus TCP and OPC UA (with its security)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from agent.config.types import DEPRECATED_OPCUA_POLICIES, Identifier, Port, _Model

# --- sources -----------------------------------------------------------------------------

class ModbusSource(_Model):
    """A Modbus TCP endpoint (a PLC or a gateway; unit ids are per tag)."""

    id: Identifier
    kind: Literal["modbus"] = Field(..., description="protocol: modbus (TCP)")
    host: str = Field(..., min_length=1, description="PLC or gateway address")
    port: Port = Field(502, description="Modbus TCP port")
    unit_id: int = Field(1, ge=0, le=255, description="default unit id of this source's tags")
    poll_interval_s: float = Field(1.0, ge=0.1, le=3600, description="time from the start of one poll to the start of the next (an overrunning poll is followed at once, and counted)")
    timeout_s: float = Field(0.5, gt=0, le=60, description="per request, one attempt; at most poll_interval_s, so a poll never outlasts its interval")
    max_registers: int = Field(125, ge=1, le=125, description="largest coalesced read")
    max_gap: int = Field(8, ge=0, le=124, description="unused registers a coalesced read may span")
    backoff_max_s: float = Field(30.0, ge=1, description="cap of the reconnect backoff")

    @model_validator(mode="after")
    def _bounded(self) -> ModbusSource:
        if self.timeout_s > self.poll_interval_s:
            raise ValueError(f"timeout_s ({self.timeout_s:g} s) must fit in poll_interval_s "
                             f"({self.poll_interval_s:g} s)")
        return self


class OpcUaSecurity(_Model):
    policy: Literal["Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss",
                    "Basic128Rsa15", "Basic256"] = Field(..., description="security policy; the deprecated Basic128Rsa15 and Basic256 are refused")
    mode: Literal["Sign", "SignAndEncrypt"] = Field("SignAndEncrypt", description="message security mode")
    certificate: Path = Field(..., description="client certificate (DER or PEM)")
    private_key: Path = Field(..., description="client private key (PEM)")
    server_certificate: Path | None = Field(None, description="pinned server certificate")
    trust_dir: Path | None = Field(None, description="folder of trusted CA / server certificates")

    @model_validator(mode="after")
    def _check(self) -> OpcUaSecurity:
        if self.policy in DEPRECATED_OPCUA_POLICIES:
            raise ValueError(f"policy {self.policy} is deprecated and insecure; use Basic256Sha256, "
                             "Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss")
        if self.server_certificate is None and self.trust_dir is None:
            raise ValueError("server_certificate (pinned) or trust_dir is required: the server's certificate must be verified")
        return self


class OpcUaSource(_Model):
    """An OPC UA server."""

    id: Identifier
    kind: Literal["opcua"] = Field(..., description="protocol: opcua")
    endpoint: str = Field(..., description="opc.tcp://host:port/path")
    mode: Literal["subscribe", "poll"] = Field("subscribe", description="subscribe: monitored items; poll: one Read service call per poll")
    poll_interval_s: float = Field(1.0, ge=0.1, le=3600, description="poll period, or publishing interval in subscribe mode")
    sampling_interval_s: float | None = Field(None, gt=0, description="monitored-item sampling interval; default poll_interval_s")
    queue_size: int = Field(10, ge=1, le=10000, description="monitored-item queue size")
    timeout_s: float = Field(4.0, gt=0, le=60, description="per request")
    username: str | None = Field(None, description="user name for the OPC UA session (anonymous when absent)")
    password_file: Path | None = Field(None, description="password for username; else PLANTFLOOR_OPCUA_PASSWORD")
    security: OpcUaSecurity | None = Field(None, description="absent means policy None, which `check` warns about")
    backoff_max_s: float = Field(30.0, ge=1, description="cap of the reconnect backoff")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme != "opc.tcp" or not parts.hostname:
            raise ValueError(f"{v!r} is not an opc.tcp:// endpoint URL")
        if parts.username or parts.password:
            raise ValueError("credentials do not belong in the endpoint URL: use username and "
                             "password_file (or PLANTFLOOR_OPCUA_PASSWORD)")
        return v


SourceConfig = Annotated[ModbusSource | OpcUaSource, Field(discriminator="kind")]
