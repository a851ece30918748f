"""Certificates (a CA per start, serving and client certificates) and kubeconfig files."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterable
from pathlib import Path


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _x509_name(cn: str, org: str | None = None):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    return now, now + dt.timedelta(days=days)


def issue_cert(
    pki: Path, fname: str, cn: str, org: str | None = None, server: bool = False, ips=(), dns=(), days: int = 30
) -> None:
    """Write ``<fname>.crt``/``<fname>.key`` signed by the CA in ``pki``: a client certificate for
    ``cn``/``org`` (user/group), or with ``server`` a serving one for those IP addresses and DNS names."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    start, until = _validity(days)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_x509_name(cn, org))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    sans = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips] + [x509.DNSName(d) for d in dns]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    (pki / f"{fname}.crt").write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    (pki / f"{fname}.key").write_bytes(_pem_key(key))
    (pki / f"{fname}.key").chmod(0o600)


def _write_ca(pki: Path, days: int) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _x509_name("disttrain-test-ca")
    start, until = _validity(days)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (pki / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (pki / "ca.key").write_bytes(_pem_key(ca_key))
    (pki / "ca.key").chmod(0o600)


def write_pki(pki: Path, ips: Iterable[str], days: int = 30) -> None:
    """CA, API server serving cert (for the addresses ``ips``), admin client cert (system:masters), the API
    server's client cert for kubelets, service-account key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pki.mkdir(parents=True, exist_ok=True)
    _write_ca(pki, days)
    dns = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    issue_cert(pki, "apiserver", "kube-apiserver", server=True, ips=list(ips), dns=dns, days=days)
    issue_cert(pki, "admin", "disttrain-admin", "system:masters", days=days)
    issue_cert(pki, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters", days=days)
    sa_key = ec.generate_private_key(ec.SECP256R1())
    (pki / "sa.key").write_bytes(_pem_key(sa_key))
    (pki / "sa.key").chmod(0o600)
    public = sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (pki / "sa.pub").write_bytes(public)


def kubeconfig_yaml(server: str, pki: Path, identity: str = "admin") -> str:
    """A kubeconfig for the client certificate ``<identity>.crt`` (data inlined)."""

    def b64(fname: str) -> str:
        return base64.b64encode((pki / fname).read_bytes()).decode()

    # JSON is YAML; no dependency on pyyaml here.
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "disttrain", "cluster": {"server": server, "certificate-authority-data": b64("ca.crt")}}],
        "users": [
            {
                "name": "disttrain-admin",
                "user": {"client-certificate-data": b64(f"{identity}.crt"), "client-key-data": b64(f"{identity}.key")},
            }
        ],
        "contexts": [
            {
                "name": "disttrain",
                "context": {"cluster": "disttrain", "user": "disttrain-admin", "namespace": "default"},
            }
        ],
        "current-context": "disttrain",
        "preferences": {},
    }
    return json.dumps(config, indent=2) + "\n"
