"""A software OPC UA PLC (asyncua server) serving each line's counter and state node.

The simulator's namespace is registered first, so its nodes are ``ns=2;s=<name>``. A
refresh task copies the :class:`SimLine`\\ s' served counter and state into the nodes every
20 ms (through the address space, so subscriptions see the change; with ``counter_update_s``
a counter node changes only after a refresh of the served counter); ``set_status`` makes a
node's DataValue carry an Uncertain or Bad status. Writes are refused (the nodes are
read-only) and counted.

asyncua builds its standard address space in about 2 s of CPU; the first server of a
user saves it as a shelf under ``$XDG_CACHE_HOME/plantfloor`` and later ones load it
lazily from there (about 0.15 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import secrets
import sys
from collections.abc import Mapping
from datetime import UTC
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.common.callback import CallbackType
from asyncua.crypto import uacrypto
from asyncua.server.server import Server
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaStatusCodeError
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from simulators.config import OpcUaPlcConfig
from simulators.plc import SoftPlc
from simulators.production import SimLine

__all__ = ["STATUS_CODES", "OpcUaPlc"]

_log = logging.getLogger(__name__)

#: the StatusCode a node carries for each status set with ``set_status``
STATUS_CODES: dict[str, int] = {
    "good": StatusCodes.Good,
    "uncertain": StatusCodes.UncertainLastUsableValue,
    "bad": StatusCodes.BadSensorFailure,
}
_VARIANT = {
    "UInt32": ua.VariantType.UInt32, "UInt64": ua.VariantType.UInt64,
    "Int32": ua.VariantType.Int32, "UInt16": ua.VariantType.UInt16,
}
_REFRESH_S = 0.02


class OpcUaPlc(SoftPlc):
    """An OPC UA server for the lines of one PLC. Constructors do no I/O.

    ``security_policies`` names ``asyncua.ua.SecurityPolicyType`` members, e.g.
    ``["Basic256Sha256_SignAndEncrypt"]`` (they need ``certificate`` and ``private_key``);
    the default offers policy None only. With ``trusted_client_certs`` only those client
    certificates are accepted.
    """

    def __init__(
        self,
        cfg: OpcUaPlcConfig,
        *,
        host: str | None = None,
        port: int | None = None,
        certificate: Path | None = None,
        private_key: Path | None = None,
        security_policies: list[str] | None = None,
        trusted_client_certs: list[Path] | None = None,
        lines: Mapping[str, SimLine] | None = None,
        seed: int = 42,
    ) -> None:
        super().__init__(cfg, host=host, port=port, lines=lines, seed=seed)
        self.cfg = cfg
        policies = security_policies or ["NoSecurity"]
        unknown = [p for p in policies if p not in ua.SecurityPolicyType.__members__]
        if unknown:
            raise ValueError(f"unknown security policies {unknown}; "
                             f"choose from {', '.join(ua.SecurityPolicyType.__members__)}")
        if any(p != "NoSecurity" for p in policies) and (certificate is None or private_key is None):
            raise ValueError("a secure policy needs certificate and private_key")
        self._policies = [ua.SecurityPolicyType[p] for p in policies]
        self._certificate = certificate
        self._private_key = private_key
        self._trusted = list(trusted_client_certs or [])
        self.ready = asyncio.Event()
        self.write_attempts = 0
        self.reads = 0
        self._delay = 0.0
        self._status: dict[tuple[str, str], str] = {}
        self._server: Server | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._nodes: dict[tuple[str, str], tuple[ua.NodeId, ua.VariantType]] = {}
        self._shown: dict[tuple[str, str], tuple[int, int]] = {}

    @property
    def endpoint(self) -> str:
        """The endpoint URL clients connect to (with the bound port once started)."""
        return f"opc.tcp://{self.host}:{self.port}{self.cfg.path}"

    def node_id(self, line_id: str, role: str) -> str:
        """The node id string of a line's ``counter``, ``second`` (reject or total counter) or
        ``state`` node, e.g. ``ns=2;s=Rogue.GoodCount``."""
        cfg = next(ln for ln in self.cfg.lines if ln.id == line_id)
        nodes = {"counter": cfg.counter.node,
                 "state": cfg.state.node if cfg.state is not None else None,
                 "second": cfg.second[1].node if cfg.second is not None else None}
        node = nodes.get(role)
        if node is None:
            raise KeyError(f"line {line_id} has no {role} node")
        return f"ns=2;s={node}"

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Build the address space and listen; sets ``port`` to the bound port and ``ready``."""
        if self._server is not None:
            raise RuntimeError(f"OPC UA PLC {self.id} is already started")
        self._start_clocks()
        self._stopping = asyncio.Event()
        server = await _new_server()
        # the clock task sleeps 1 s between ticks and would make every stop wait for it
        server.disable_clock()
        server.set_server_name(f"plantfloor simulator {self.id}")
        server.set_endpoint(self.endpoint)
        server.set_security_policy(self._policies)
        # offering certificate or password tokens over policy None only earns warnings
        secure = any(p != ua.SecurityPolicyType.NoSecurity for p in self._policies)
        server.set_identity_tokens([ua.AnonymousIdentityToken, ua.UserNameIdentityToken, ua.X509IdentityToken]
                                   if secure else [ua.AnonymousIdentityToken])
        if self._certificate is not None and self._private_key is not None:
            await server.load_certificate(str(self._certificate))
            await server.load_private_key(str(self._private_key))
            # clients check that the server's application URI is the one in its certificate
            uri = _certificate_uri(server.iserver.certificate)
            if uri is not None:
                await server.set_application_uri(uri)
        if self._trusted:
            trusted = {_der(await uacrypto.load_certificate(str(p))) for p in self._trusted}
            server.set_certificate_validator(_trust_only(trusted))
        await self._build(server)
        server.subscribe_server_callback(CallbackType.PreWrite, self._on_write)
        server.subscribe_server_callback(CallbackType.PreRead, self._on_read)
        await server.start()
        self._server = server
        if server.bserver is not None:
            self.port = int(server.bserver.port)
        self._refresh = asyncio.create_task(self._refresh_loop(), name=f"opcua-plc-{self.id}-refresh")
        self.ready.set()

    async def stop(self) -> None:
        """Close every session and the listener."""
        server, self._server = self._server, None
        task, self._refresh = self._refresh, None
        self.ready.clear()
        self._stopping.set()
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        if server is not None:
            await server.stop()
            # Server.stop keeps the sessions it holds for subscription transfer, and their
            # tasks; a real power cycle ends them
            for session in list(server.iserver._external_sessions.values()):
                await session.close_session(True)

    # --- fault knobs -------------------------------------------------------------------

    def set_status(self, line_id: str, role: str, status: str) -> None:
        """Give a node's DataValue the status good, uncertain (UncertainLastUsableValue) or bad
        (BadSensorFailure); the value keeps being written, though OPC UA servers serve a Bad
        value as null."""
        if role not in ("counter", "state"):
            raise ValueError(f"role must be counter or state, not {role!r}")
        if status not in STATUS_CODES:
            raise ValueError(f"status must be one of {', '.join(STATUS_CODES)}, not {status!r}")
        if line_id not in self.lines:
            raise KeyError(line_id)
        self._status[(line_id, role)] = status

    def set_delay(self, seconds: float) -> None:
        """Answer Read service requests ``seconds`` late (0 restores). Subscriptions are not
        delayed: asyncua offers no hook before a publish response."""
        if seconds < 0:
            raise ValueError("delay must not be negative")
        self._delay = seconds

    # --- serving -----------------------------------------------------------------------

    async def _build(self, server: Server) -> None:
        idx = await server.register_namespace(self.cfg.namespace)
        if idx != 2:
            raise RuntimeError(f"namespace {self.cfg.namespace} got index {idx}, expected 2")
        folder = await server.nodes.objects.add_object(_string_node(self.id, idx), self.id)
        self._nodes.clear()
        self._shown.clear()
        for cfg in self.cfg.lines:
            roles: list[tuple[str, str, str]] = [("counter", cfg.counter.node, cfg.counter.type)]
            if cfg.second is not None:
                roles.append(("second", cfg.second[1].node, cfg.second[1].type))
            if cfg.state is not None:
                roles.append(("state", cfg.state.node, cfg.state.type))
            for role, name, vtype in roles:
                nid = _string_node(name, idx)
                value = self._value(cfg.id, role)
                await folder.add_variable(nid, name, ua.Variant(value, _VARIANT[vtype]))
                self._nodes[(cfg.id, role)] = (nid, _VARIANT[vtype])
                self._shown[(cfg.id, role)] = (value, StatusCodes.Good)

    def _value(self, line_id: str, role: str) -> int:
        line = self.lines[line_id]
        if role == "second":
            return line.served_second
        return line.served_counter if role == "counter" else line.state_code

    async def _refresh_loop(self) -> None:
        failing = False
        while True:
            try:
                await self._push()
                failing = False
            except Exception:  # keep serving; log the failure once, not every 20 ms
                if not failing:
                    _log.exception("OPC UA PLC %s: cannot update its nodes", self.id)
                failing = True
            await asyncio.sleep(_REFRESH_S)

    async def _push(self) -> None:
        server = self._server
        if server is None:
            return
        for key, (nid, vtype) in self._nodes.items():
            shown = (self._value(*key), STATUS_CODES[self._status.get(key, "good")])
            if shown == self._shown.get(key):
                continue
            now = ua.DateTime.now(UTC)
            dv = ua.DataValue(ua.Variant(shown[0], vtype), StatusCode=ua.StatusCode(ua.UInt32(shown[1])),
                              SourceTimestamp=now, ServerTimestamp=now)
            await server.write_attribute_value(nid, dv)
            self._shown[key] = shown

    async def _on_write(self, event: Any, _dispatcher: Any) -> None:
        if event.is_external:
            self.write_attempts += 1

    async def _on_read(self, event: Any, _dispatcher: Any) -> None:
        if not event.is_external:
            return
        self.reads += 1
        if self._delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._delay)


def _string_node(name: str, idx: int) -> ua.NodeId:
    return ua.NodeId(ua.String(name), ua.Int16(idx))


def _certificate_uri(cert: x509.Certificate | None) -> str | None:
    if cert is None:
        return None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _trust_only(trusted: set[bytes]) -> Any:
    """A certificate validator accepting exactly the given client certificates."""
    async def validate(cert: x509.Certificate, _app: Any) -> None:
        if _der(cert) not in trusted:
            raise UaStatusCodeError(StatusCodes.BadCertificateUntrusted)  # type: ignore[no-untyped-call]
    return validate


# --- the standard address space, cached -----------------------------------------------

def _shelf_path() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "plantfloor"
    version = importlib.metadata.version("asyncua")
    return base / f"asyncua-{version}-py{sys.version_info[0]}.{sys.version_info[1]}-aspace"


async def _new_server() -> Server:
    """An initialised asyncua Server, from the cached address space when there is one."""
    shelf = _shelf_path()
    server = Server()
    if shelf.is_file():
        try:
            await server.init(shelf)
            return server
        except Exception as exc:  # a damaged cache is rebuilt, never fatal
            _log.warning("ignoring the OPC UA address space cache %s: %s", shelf, exc)
            server = Server()
    try:
        await asyncio.to_thread(shelf.parent.mkdir, mode=0o700, parents=True, exist_ok=True)
    except OSError:
        await server.init()
        return server
    # build under a private name, then move into place: a concurrent reader never sees half a shelf
    tmp = shelf.parent / f".{shelf.name}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        await server.init(tmp)
        await asyncio.to_thread(_publish_shelf, tmp, shelf)
    except OSError as exc:
        _log.warning("cannot cache the OPC UA address space in %s: %s", shelf.parent, exc)
        server = Server()
        await server.init()
    return server


def _publish_shelf(tmp: Path, shelf: Path) -> None:
    for part in sorted(tmp.parent.glob(tmp.name + "*")):
        os.replace(part, shelf.parent / (shelf.name + part.name[len(tmp.name):]))
    # the shelf path itself marks a complete cache (dbm.dumb keeps its data in .dat/.dir)
    if not shelf.exists():
        shelf.touch()
