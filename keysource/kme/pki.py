"""A small PKI for KMEs and SAEs: one CA, KME server certificates, SAE client certificates.

Layout of a PKI directory (PEM files; private keys are mode 0600)::

    ca.pem  ca.key                 the CA (keep ca.key on one machine only)
    kme/<KME_ID>.pem .key          KME certificates: serverAuth + clientAuth, OU=KME,
                                   SAN = 127.0.0.1, ::1, localhost and any --hostname
    sae/<SAE_ID>.pem .key          SAE client certificates: clientAuth, OU=SAE, CN=SAE_ID,
                                   SAN URI urn:qsecret:sae:<SAE_ID>
    link.psk                       the QKD link's pre-shared authentication secret

An SAE is identified by its client certificate: issued by this CA, OU=SAE, CN = SAE_ID.
A KME talks to its peer KME with its own certificate (OU=KME, CN = KME_ID). Keys are
ECDSA P-256; certificates are made with pyca/cryptography.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .sae_id import RESERVED_SAE_PREFIX, InvalidSaeId, is_valid_sae_id
from .sae_id import check_sae_id as _check_sae_id
from .tls import PkiError, client_ssl_context  # defined there, part of this module's API

ROLE_KME = "KME"
ROLE_SAE = "SAE"
SAE_URI_PREFIX = "urn:qsecret:sae:"
CA_DAYS = 3650
LEAF_DAYS = 825


@dataclass(frozen=True)
class CertPaths:
    cert: Path
    key: Path


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def check_identity(value: str, what: str) -> str:
    """KME and SAE names follow the one SAE_ID rule (:mod:`.sae_id`)."""
    try:
        return _check_sae_id(value, what)
    except InvalidSaeId as exc:
        raise PkiError(str(exc)) from None


class Pki:
    """A PKI directory (see the module docstring for its layout)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- paths ------------------------------------------------------------------------

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def psk_file(self) -> Path:
        return self.root / "link.psk"

    def kme(self, kme_id: str) -> CertPaths:
        check_identity(kme_id, "KME_ID")
        return CertPaths(self.root / "kme" / f"{kme_id}.pem", self.root / "kme" / f"{kme_id}.key")

    def sae(self, sae_id: str) -> CertPaths:
        check_identity(sae_id, "SAE_ID")
        return CertPaths(self.root / "sae" / f"{sae_id}.pem", self.root / "sae" / f"{sae_id}.key")

    def exists(self) -> bool:
        return self.ca_cert.exists()

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise creation across processes (two KMEs starting at once share one CA)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- issuing ----------------------------------------------------------------------

    def create_ca(self, name: str = "qsecret KME CA") -> None:
        if self.exists():
            raise PkiError(f"a CA already exists in {self.root}")
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        _write_private(self.ca_key, _key_pem(key))
        self.ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def _load_ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        if not self.ca_cert.exists():
            raise PkiError(f"no CA in {self.root} (run 'qsecret kme pki init --dir {self.root}')")
        if not self.ca_key.exists():
            raise PkiError(
                f"no CA key at {self.ca_key}: issue certificates on the machine that holds it"
            )
        cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cert, key

    def _issue(
        self,
        paths: CertPaths,
        *,
        common_name: str,
        role: str,
        san: Sequence[x509.GeneralName],
        usages: Sequence[x509.ObjectIdentifier],
    ) -> CertPaths:
        ca_cert, ca_key = self._load_ca()
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                ])
            )
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), False
            )
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write_private(paths.key, _key_pem(key))
        paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return paths

    def issue_kme(self, kme_id: str, hostnames: Sequence[str] = ()) -> CertPaths:
        """A KME certificate valid for loopback and ``hostnames`` (DNS names or IP addresses)."""
        names: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
        for host in hostnames:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        return self._issue(
            self.kme(kme_id),
            common_name=kme_id,
            role=ROLE_KME,
            san=names,
            usages=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        )

    def issue_sae(self, sae_id: str) -> CertPaths:
        """An SAE client certificate: CN = SAE_ID, which is how KMEs recognise the SAE."""
        if sae_id.startswith(RESERVED_SAE_PREFIX):
            raise PkiError(f"SAE_IDs starting {RESERVED_SAE_PREFIX!r} are reserved for the "
                           "KMEs' key relay")
        return self._issue(
            self.sae(sae_id),
            common_name=sae_id,
            role=ROLE_SAE,
            san=[x509.UniformResourceIdentifier(SAE_URI_PREFIX + sae_id)],
            usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
        )

    def ensure(
        self,
        *,
        kme_ids: Sequence[str] = (),
        sae_ids: Sequence[str] = (),
        hostnames: Sequence[str] = (),
        psk: bytes | None = None,
    ) -> list[Path]:
        """Create whatever is missing (CA, certificates, link PSK); return the files created."""
        created: list[Path] = []
        with self.locked():
            if not self.exists():
                self.create_ca()
                created += [self.ca_cert, self.ca_key]
            for kme_id in kme_ids:
                if not self.kme(kme_id).cert.exists():
                    paths = self.issue_kme(kme_id, hostnames)
                    created += [paths.cert, paths.key]
            for sae_id in sae_ids:
                if not self.sae(sae_id).cert.exists():
                    paths = self.issue_sae(sae_id)
                    created += [paths.cert, paths.key]
            if psk is not None and not self.psk_file.exists():
                _write_private(self.psk_file, psk.hex().encode() + b"\n")
                created.append(self.psk_file)
        return created

    def read_psk(self) -> bytes:
        if not self.psk_file.exists():
            raise PkiError(f"no link PSK at {self.psk_file} (run 'qsecret kme pki init')")
        return bytes.fromhex(self.psk_file.read_text().strip())

    # -- TLS contexts -----------------------------------------------------------------

    def server_context(self, kme_id: str) -> ssl.SSLContext:
        """TLS server context for a KME: asks every client for a certificate from this CA.

        The certificate is optional at the TLS layer so that a client without one gets a
        readable 401 instead of a handshake failure; a certificate from another CA still
        fails the handshake.
        """
        paths = self.kme(kme_id)
        if not paths.cert.exists():
            raise PkiError(f"no certificate for KME {kme_id} in {self.root}")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca_cert))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(paths.cert), str(paths.key))
        ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx

    def client_context(self, paths: CertPaths) -> ssl.SSLContext:
        """TLS client context presenting ``paths`` and trusting only this CA."""
        return client_ssl_context(ca=self.ca_cert, cert=paths.cert, key=paths.key)


class PkiSaeRegistry:
    """The SAEs registered in a PKI directory: a certificate ``sae/<SAE_ID>.pem`` from its CA.

    This is the list of SAEs both KMEs of a pair hold (they share the PKI directory; SAEs
    enrolled later appear without a restart). A file counts only if it is a valid SAE
    certificate for that very SAE_ID (OU=SAE, CN=SAE_ID, signed by this CA, not expired), so
    a stray file registers nobody. Checked results are kept while the file is unchanged.
    Removing the file unregisters the SAE for new bindings.
    """

    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self._ca: x509.Certificate | None = None
        self._checked: dict[str, tuple[tuple[int, int], bool]] = {}

    def knows(self, sae_id: str) -> bool:
        if not is_valid_sae_id(sae_id):
            return False
        path = self.pki.sae(sae_id).cert
        try:
            stat = path.stat()
        except FileNotFoundError:
            return False
        version = (stat.st_mtime_ns, stat.st_size)
        cached = self._checked.get(sae_id)
        if cached is not None and cached[0] == version:
            return cached[1]
        valid = self._valid(path, sae_id)
        self._checked[sae_id] = (version, valid)
        return valid

    def _valid(self, path: Path, sae_id: str) -> bool:
        if self._ca is None:
            self._ca = x509.load_pem_x509_certificate(self.pki.ca_cert.read_bytes())
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
            cert.verify_directly_issued_by(self._ca)
        except (ValueError, TypeError, OSError, InvalidSignature):
            return False
        subject = cert.subject
        names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        units = subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        now = dt.datetime.now(dt.UTC)
        return (
            [n.value for n in names] == [sae_id]
            and [u.value for u in units] == [ROLE_SAE]
            and cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
        )


@dataclass(frozen=True)
class PeerIdentity:
    """Who is on the other end of a TLS connection, from the verified certificate."""

    role: str  # "SAE" or "KME"
    name: str  # SAE_ID or KME_ID


def identity_from_peercert(peercert: dict[str, object] | None) -> PeerIdentity | None:
    """Read role (OU) and name (CN) from ``ssl.SSLSocket.getpeercert()`` output.

    Only certificates that passed verification against the KME's CA reach this point.
    For SAEs a subjectAltName URI, when present, must name the same SAE_ID.
    """
    if not peercert:
        return None
    attrs: dict[str, str] = {}
    for rdn in peercert.get("subject", ()):  # type: ignore[union-attr]
        for name, value in rdn:
            attrs[name] = value
    role = attrs.get("organizationalUnitName")
    name = attrs.get("commonName")
    if role not in (ROLE_SAE, ROLE_KME) or not name or not is_valid_sae_id(name):
        return None
    if role == ROLE_SAE:
        uris = [v for k, v in peercert.get("subjectAltName", ()) if k == "URI"]  # type: ignore[union-attr]
        if uris and SAE_URI_PREFIX + name not in uris:
            return None
    return PeerIdentity(role=role, name=name)
