"""OPC UA secure-channel set-up: the server certificate is verified before it is trusted.

asyncua's ``set_security()`` without a server certificate fetches one over an unsecured
GetEndpoints call and trusts it blindly. Here the certificate the server offers for the
configured policy and mode is checked first, against the pinned certificate
(``server_certificate``) or the trust folder (``trust_dir``), for its validity period and
for its subjectAltName URI matching the server's application URI. Only a certificate that
passes is handed to asyncua, and the same check runs again on the certificate the server
returns in CreateSession. A failure raises :class:`ServerNotTrusted`; there is never a
fallback to security policy None.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.utils import ServiceError
from asyncua.crypto import security_policies
from asyncua.crypto.truststore import basic_ca_validator
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from agent.config import OpcUaSecurity, resolve_secret_file

__all__ = [
    "POLICIES",
    "ServerNotTrusted",
    "TrustAnchor",
    "configure_security",
    "load_certificate",
    "verify_server_certificate",
]

#: configured policy name -> asyncua policy class (deprecated policies are refused by config)
POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}

_CHECKS = (CertificateValidatorOptions.TIME_RANGE | CertificateValidatorOptions.URI
           | CertificateValidatorOptions.PEER_SERVER)


class ServerNotTrusted(Exception):
    """The server's certificate failed verification; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def _parse_certificate(data: bytes) -> x509.Certificate:
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


async def load_certificate(path: Path) -> x509.Certificate:
    """A certificate file, PEM or DER, read off the event loop."""
    return _parse_certificate(await asyncio.to_thread(path.read_bytes))


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _first_certificate(blob: bytes) -> bytes:
    """The leading certificate of a DER blob that may carry the chain behind it."""
    if len(blob) < 4 or blob[1] != 0x82:
        return blob
    return blob[: int.from_bytes(blob[2:4], "big") + 4]


def _thumbprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA1()).hex()  # OPC UA names certificates by SHA-1 thumbprint


class TrustAnchor:
    """The configured trust anchor: a pinned certificate or a folder of trusted ones.

    A server certificate is trusted when it is in the folder itself (a self-signed PLC
    certificate) or chains up to a CA certificate there (the policy of asyncua's
    ``TrustStore``, without its error log and traceback on every refusal).
    """

    def __init__(self, pinned: x509.Certificate | None, folder: list[x509.Certificate]) -> None:
        self.pinned = pinned
        self.folder = folder
        self._policy = x509.verification.PolicyBuilder().extension_policies(
            ca_policy=x509.verification.ExtensionPolicy.permit_all().require_present(
                x509.BasicConstraints, x509.verification.Criticality.AGNOSTIC, basic_ca_validator),
            ee_policy=x509.verification.ExtensionPolicy.permit_all(),
        )

    @classmethod
    async def load(cls, sec: OpcUaSecurity) -> TrustAnchor:
        """Read the pinned certificate or the trust folder (again on every connect)."""
        if sec.server_certificate is not None:
            return cls(await load_certificate(sec.server_certificate), [])
        assert sec.trust_dir is not None  # the config model requires one of the two
        folder = sec.trust_dir
        names = await asyncio.to_thread(
            lambda: sorted(p for p in folder.iterdir()
                           if p.is_file() and p.suffix.lower() in (".der", ".pem", ".crt", ".cer")))
        return cls(None, [await load_certificate(p) for p in names])

    def _chains_to_folder(self, cert: x509.Certificate) -> bool:
        if not self.folder:
            return False
        verifier = self._policy.store(x509.verification.Store(self.folder)).build_client_verifier()
        try:
            verifier.verify(cert, [])
        except x509.verification.VerificationError:
            return False
        return True

    def check(self, cert: x509.Certificate) -> None:
        """Raise :class:`ServerNotTrusted` unless ``cert`` is pinned or trusted."""
        if self.pinned is not None:
            if _der(cert) != _der(self.pinned):
                raise ServerNotTrusted(
                    f"the server certificate (SHA-1 {_thumbprint(cert)}) is not the pinned one "
                    f"(SHA-1 {_thumbprint(self.pinned)})")
            return
        if any(_der(cert) == _der(c) for c in self.folder):
            return  # directly trusted (typically a self-signed PLC certificate)
        if self._chains_to_folder(cert):
            return
        raise ServerNotTrusted(
            f"the server certificate (SHA-1 {_thumbprint(cert)}, subject {cert.subject.rfc4514_string()}) "
            "is not in the trust folder and not issued by a certificate there")


async def verify_server_certificate(trust: TrustAnchor, cert: x509.Certificate,
                                    server: ua.ApplicationDescription) -> None:
    """Pin or trust list first, then validity period and application URI."""
    trust.check(cert)
    try:
        await CertificateValidator(_CHECKS).validate(cert, server)
    except ServiceError as exc:
        name = ua.StatusCode(ua.UInt32(exc.code)).name
        detail = {
            "BadCertificateTimeInvalid": "the server certificate is expired or not yet valid",
            "BadCertificateUriInvalid": f"the server certificate's subjectAltName URI does not name the server's "
                                        f"application URI {server.ApplicationUri!r}",
        }.get(name, "the server certificate is malformed")
        raise ServerNotTrusted(f"{detail} ({name})") from exc


def _validator(trust: TrustAnchor) -> Callable[[x509.Certificate, ua.ApplicationDescription], Awaitable[None]]:
    """The CreateSession hook: the certificate in the session response is checked again."""

    async def validate(cert: x509.Certificate, server: ua.ApplicationDescription) -> None:
        try:
            await verify_server_certificate(trust, cert, server)
        except ServerNotTrusted as exc:
            raise ServiceError(StatusCodes.BadCertificateUntrusted) from exc

    return validate


async def _offered_endpoint(url: str, request_timeout_s: float, policy_uri: str,
                            mode: ua.MessageSecurityMode) -> ua.EndpointDescription:
    """GetEndpoints over a discovery-only channel; nothing read from it is trusted yet."""
    probe = Client(url, timeout=request_timeout_s)
    endpoints: list[ua.EndpointDescription] = await probe.connect_and_get_server_endpoints()
    for ep in endpoints:
        if ep.SecurityPolicyUri == policy_uri and ep.SecurityMode == mode:
            return ep
    offered = sorted({f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name}" for e in endpoints})
    raise ServerNotTrusted(
        f"the server offers no {policy_uri.rsplit('#', 1)[-1]}/{mode.name} endpoint "
        f"(offered: {', '.join(offered) or 'none'})")


async def configure_security(client: Client, sec: OpcUaSecurity,
                             request_timeout_s: float) -> None:
    """Set the client's policy, mode and certificates against a verified server certificate.

    Raises :class:`ServerNotTrusted` when the server's certificate fails verification,
    and the library's or the OS's exceptions when the server cannot be reached or a
    file cannot be read (the caller translates both).
    """
    policy = POLICIES[sec.policy]
    mode = getattr(ua.MessageSecurityMode, sec.mode)
    trust = await TrustAnchor.load(sec)
    own = await load_certificate(resolve_secret_file(sec.certificate))
    uris = _san_uris(own)
    if uris:
        # servers match the session's ApplicationUri against the client certificate
        client.application_uri = uris[0]
    ep = await _offered_endpoint(client.server_url.geturl(), request_timeout_s, policy.URI, mode)
    if not ep.ServerCertificate:
        raise ServerNotTrusted("the server endpoint carries no certificate")
    cert = x509.load_der_x509_certificate(_first_certificate(ep.ServerCertificate))
    await verify_server_certificate(trust, cert, ep.Server)
    key = await asyncio.to_thread(resolve_secret_file(sec.private_key).read_bytes)
    await client.set_security(policy, certificate=_der(own), private_key=_key_der(key),
                              server_certificate=_der(cert), mode=mode)
    client.certificate_validator = _validator(trust)


def _key_der(data: bytes) -> bytes:
    """The private key in DER, whatever its file format (asyncua guesses by extension)."""
    key: Any
    if data.lstrip().startswith(b"-----BEGIN"):
        key = serialization.load_pem_private_key(data, password=None)
    else:
        key = serialization.load_der_private_key(data, password=None)
    return bytes(key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


def _san_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(u) for u in san.value.get_values_for_type(x509.UniformResourceIdentifier)]
