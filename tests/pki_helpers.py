"""Certificates for the TLS tests (test_web.py, test_kubeclient.py), made with the
`cryptography` package: a CA, a server certificate for 127.0.0.1, a client certificate, and
a CA and client certificate of another authority."""
from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path


def _name(cn: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(subject: str, issuer_key, issuer_cert, *, ca: bool = False, server: bool = False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(subject))
         .issuer_name(issuer_cert.subject if issuer_cert else _name(subject))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
    elif not ca:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
    cert = b.sign(issuer_key or key, hashes.SHA256())
    return key, cert


def _write(directory: Path, stem: str, key, cert) -> None:
    from cryptography.hazmat.primitives import serialization
    (directory / f"{stem}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (directory / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_pki(d: Path) -> Path:
    """ca, server (127.0.0.1) and client signed by ca; rogue-ca and rogue (a client
    certificate of another CA): <stem>.crt and <stem>.key in `d`."""
    ca_key, ca = _issue("podsnoop test CA", None, None, ca=True)
    _write(d, "ca", ca_key, ca)
    _write(d, "server", *_issue("podsnoop", ca_key, ca, server=True))
    _write(d, "client", *_issue("prometheus", ca_key, ca))
    rogue_key, rogue_ca = _issue("another CA", None, None, ca=True)
    _write(d, "rogue-ca", rogue_key, rogue_ca)
    _write(d, "rogue", *_issue("prometheus", rogue_key, rogue_ca))
    return d
