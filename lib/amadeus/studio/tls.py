"""A certificate made on this machine, for `amadeus serve --https` (a phone or tablet on the network).

Browsers give Web MIDI (and the audio clock's full precision) only to secure contexts: localhost, or a
page served over HTTPS. For a phone on the same network the studio makes a self-signed certificate
once, for this machine's host name and addresses, and keeps it (with its key, readable by this user
only) in a folder so the phone is asked to trust it only once. Its SHA-256 fingerprint is printed so
the player can compare it with what the phone shows before accepting it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from pathlib import Path

from amadeus.errors import UserError

CERT_NAME, KEY_NAME = "studio-cert.pem", "studio-key.pem"
VALID_DAYS = 825  # the longest validity Apple platforms accept for a TLS server certificate


def default_folder() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "amadeus" / "studio"


def local_addresses() -> list[str]:
    """This machine's IP addresses that a phone could reach (found without sending anything)."""
    found = {"127.0.0.1"}
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(str(info[4][0]))
    except OSError:
        pass
    try:  # the address of the default route's interface: a UDP "connect" sends no packet
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed anywhere
            found.add(s.getsockname()[0])
    except OSError:
        pass
    return sorted(a for a in found if "%" not in a)


def ensure_certificate(folder: str | os.PathLike | None = None) -> tuple[Path, Path, str]:
    """(certificate, key, SHA-256 fingerprint), made now if the folder has none for these addresses."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = Path(folder) if folder is not None else default_folder()
    cert_path, key_path = folder / CERT_NAME, folder / KEY_NAME
    names = sorted({socket.gethostname(), "localhost"})
    addresses = local_addresses()
    if cert_path.is_file() and key_path.is_file():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        covered = {str(a) for a in san.get_values_for_type(x509.IPAddress)}
        if set(addresses) <= covered and cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC):
            return cert_path, key_path, _fingerprint(cert)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"serve --https: cannot make {folder} for the certificate: {e.strerror}") from None
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"amadeus studio on {socket.gethostname()}")])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName([x509.DNSName(n) for n in names]
                                      + [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS)).add_extension(san, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    from amadeus.fileio import write_bytes

    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    write_bytes(key_path, key_pem)
    os.chmod(key_path, 0o600)
    write_bytes(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path, _fingerprint(cert)


def ssl_context(cert: str | os.PathLike, key: str | os.PathLike) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as e:
        raise UserError(f"serve --https: cannot use {cert} / {key}: {e}") from None
    return context


def _fingerprint(cert: object) -> str:
    from cryptography.hazmat.primitives import hashes

    digest = cert.fingerprint(hashes.SHA256())  # type: ignore[attr-defined]
    return ":".join(f"{b:02X}" for b in digest)
