"""A throwaway signing key for the IMA/EVM tests: what evmctl and the kernel's keyrings take."""

from __future__ import annotations

import subprocess
from pathlib import Path


def self_signed(key: Path, cert: Path, subject: str = "initium test") -> tuple[Path, Path]:
    """An RSA-2048 private key (PEM) and its self-signed X.509 certificate (DER), 2 days."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-subj", f"/CN={subject}", "-days", "2", "-outform", "DER",
                    "-out", str(cert)], check=True, capture_output=True)
    return key, cert
