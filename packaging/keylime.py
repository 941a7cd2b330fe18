"""Reference digests of an image in the form of keylime's runtime policies.

keylime's verifier checks each IMA measurement (path, file digest) against
a runtime policy: a JSON object whose ``digests`` map a path to the list of
hex digests allowed for it.  The fields and their types here follow
keylime's own definition of that object, version 1: ``RuntimePolicyType``
in keylime/ima/types.py and ``RUNTIME_POLICY_SCHEMA`` with
``RUNTIME_POLICY_CURRENT_VERSION = 1`` in keylime/ima/ima.py
(github.com/keylime/keylime).  The initramfs files are measured under the
paths they have in the rootfs, which are the manifest's paths.

Only the manifest is read: the caller verifies the image against it first,
so the reference values describe bytes that were checked.
"""

from __future__ import annotations

import stat
from typing import Any

RUNTIME_POLICY_VERSION = 1
GENERATOR_UNKNOWN = 0
"""keylime's RUNTIME_POLICY_GENERATOR: 0 Unknown, 1 EmptyAllowList, 2 CompatibleAllowList,
3 LegacyAllowList; a policy made outside keylime's tools is "Unknown"."""


def runtime_policy(manifest: dict[str, Any]) -> dict[str, Any]:
    """A keylime runtime policy allowing exactly the image's regular files.

    A path present in two components is unpacked twice and the later copy
    wins in the rootfs, so only the later component's digest is allowed.
    ``log_hash_alg`` is keylime's default (sha1, the template hash of the
    IMA log); the file digests are sha256, as IMA writes them with
    ``ima_hash=sha256``.  No time stamp, so the output is reproducible.
    """
    digests: dict[str, list[str]] = {}
    for comp in manifest["components"]:
        for item in comp["files"]:
            if stat.S_ISREG(int(item["mode"], 8)):
                digests[item["path"]] = [item["sha256"]]
    return {
        "meta": {"version": RUNTIME_POLICY_VERSION, "generator": GENERATOR_UNKNOWN},
        "release": 0,
        "digests": dict(sorted(digests.items())),
        "excludes": [],
        "keyrings": {},
        "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": None},
        "ima-buf": {},
        "verification-keys": "",
    }
