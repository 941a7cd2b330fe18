"""IMA and EVM: keys into their keyrings, the IMA policy, then EVM switched on.

After the xattr lists (files carry their ``security.ima`` before a policy
can appraise them, and before EVM checks ``security.evm``) and after
SELinux (a rule may name SELinux types, which the kernel resolves against
the loaded policy).  In that order, because a policy that appraises
signatures needs the keys first, and EVM once on judges every later
attribute change:

1. the image's X.509 certificates into ``.ima`` (the kernel's trusted
   keyring) or, when the kernel has none, into ``_ima`` made in root's
   user keyring, as ``evmctl import`` does; the same for ``.evm``/``_evm``;
2. the policy, one rule per write to /sys/kernel/security/ima/policy; when
   the kernel answers that it wants a signed policy, the policy's path;
3. EVM's bit mask from the image's ``evm_mode``, last: the xattrs stage
   has put ``security.evm`` on the image's files while EVM was off (EVM
   lets any attribute be written until it has a key), and with
   ``EVM_INIT_X509`` only once a key is in ``.evm``/``_evm`` (without one
   EVM would fail every file IMA appraises).

Failures are warnings (", ignoring") unless IMA is required, by the image
(``ima_required``) or by ``rd.ima.require_policy=1``: then every failure,
and a missing policy, stops the boot with no shell (fail closed).  The
command line can require IMA, never relax an image that requires it.
See docs/ima.md.
"""

from __future__ import annotations

import errno

from initium.options import Option
from initium.stage import JSON, BootContext, Image, Stage, StageError
from initium.stages.ima_ops import (
    EVM_FILE,
    EVM_INIT_X509,
    IMA_POLICY_FILE,
    SECURITYFS_IMA,
    AddKey,
    EnableEvm,
    LoadImaPolicy,
    NewKeyring,
    evm_bits,
    find_keyring,
    parse_proc_keys,
)

SELINUX_ENFORCE = "/sys/fs/selinux/enforce"  # there once the selinux stage mounted selinuxfs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    Failed = Callable[[str, str], None]


def _bit(value: str) -> bool:
    if value in ("1", "yes", "true", "on"):
        return True
    if value in ("0", "no", "false", "off"):
        return False
    raise ValueError(f"{value!r} is not 0 or 1")


REQUIRE_POLICY = Option(
    "rd.ima.require_policy", "ima_require_policy",
    "1: IMA is required; a missing or refused IMA policy, a key the kernel refuses, or EVM "
    "not enabled stops the boot with no shell (as the image's ima_required does). 0 (the "
    "default) logs those failures and goes on; it cannot relax an image built with "
    "ima_required.", "none (dracut's integrity module has no such option; systemd's "
    "ima-setup loads /etc/ima/ima-policy without one)", _bit, metavar="0|1", owner="ima")

# errnos of a keyring restriction that found no trusted signer (restrict_link_by_signature)
_UNTRUSTED = (errno.ENOKEY, errno.EKEYREJECTED, errno.EPERM)
_UNPARSED = (errno.EBADMSG, errno.EINVAL, errno.ENOPKG)


def key_refusal(path: str, keyring: str, err: OSError) -> tuple[str, str]:
    """The cause and hint for a key the kernel did not take."""
    reason = err.strerror or f"errno {err.errno}"
    if keyring.startswith(".") and err.errno in _UNTRUSTED:
        return (f"the kernel refused key {path} for {keyring}: it accepts only keys signed by "
                f"a built-in or secondary trusted key ({reason})",
                "sign the certificate with a key of the kernel's .builtin_trusted_keys or "
                ".secondary_trusted_keys, or use a kernel built without "
                "CONFIG_INTEGRITY_TRUSTED_KEYRING (it then uses _ima, which takes any key)")
    if err.errno in _UNPARSED:
        return (f"the kernel refused key {path} for {keyring}: it cannot use it as an X.509 "
                f"certificate ({reason})",
                "give a DER X.509 certificate (openssl x509 -outform DER) with a key "
                "algorithm this kernel has")
    return f"cannot add key {path} to {keyring}: {reason}", "see dmesg"


class Ima(Stage):
    name = "ima"
    after = ("early-mounts", "console", "rootfs", "xattrs", "selinux")
    before = ("modules", "udev", "storage", "root")
    options = (REQUIRE_POLICY,)

    def install(self, image: Image) -> JSON:
        from initium.packaging.config import BuildConfig
        from initium.packaging.ima import plan_data

        return plan_data(BuildConfig(**{k: image.option(k) for k in (
            "ima_policy", "ima_certs", "evm_certs", "evm_mode", "ima_required",
            "evm_sign_key", "selinux_policy")}))

    def run(self, ctx: BootContext) -> None:
        data = ctx.data()
        required = bool(data.get("required")) or ctx.value(REQUIRE_POLICY) is True
        policy = data.get("policy")
        ima_keys = list(data.get("ima_keys") or [])
        evm_keys = list(data.get("evm_keys") or [])
        evm_mode = data.get("evm_mode")
        if not (required or policy or ima_keys or evm_keys or evm_mode):
            ctx.debug("no IMA policy, keys or EVM mode in this image: nothing to do")
            return
        why = "rd.ima.require_policy=1" if ctx.value(REQUIRE_POLICY) is True else \
            "the image's ima_required"

        def failed(cause: str, hint: str) -> None:
            if required:
                raise StageError(cause, f"{hint}; IMA is required ({why}), so the boot stops",
                                 security=True)
            ctx.warn(f"{cause}, ignoring")

        sys = ctx.sys
        if not sys.exists(SECURITYFS_IMA):
            failed(f"the kernel has no IMA ({SECURITYFS_IMA} is missing)",
                   "boot a kernel with CONFIG_IMA (and securityfs mounted)")
            return
        start = sys.monotonic()
        ima_said, _ = self._keys(ctx, ima_keys, ".ima", "_ima", failed)
        evm_said, evm_added = self._keys(ctx, evm_keys, ".evm", "_evm", failed)
        done = [ima_said, evm_said, self._policy(ctx, policy, required, failed),
                self._evm(ctx, evm_mode, evm_added, bool(data.get("evm_covers_labels")),
                          failed)]
        said = "; ".join(d for d in done if d)
        ctx.log(f"{said or 'nothing loaded'} in {sys.monotonic() - start:.3f} s")

    def _keys(self, ctx: BootContext, keys: list[str], trusted: str, fallback: str,
              failed: Failed) -> tuple[str, int]:
        """(what to log, how many keys the kernel took)."""
        if not keys:
            return "", 0
        sys = ctx.sys
        try:
            listed = parse_proc_keys(sys.read_text("/proc/keys"))
        except OSError as err:
            failed(f"cannot read /proc/keys: {err.strerror}", "boot a kernel with CONFIG_KEYS")
            return "", 0
        serial, name = find_keyring(listed, trusted), trusted
        if serial is None:
            serial, name = find_keyring(listed, fallback), fallback
        if serial is None:
            try:
                serial = int(sys.apply(NewKeyring(fallback)))
            except OSError as err:
                failed(f"cannot make the keyring {fallback}: {err.strerror}",
                       "boot a kernel with CONFIG_KEYS")
                return "", 0
            ctx.debug(f"the kernel has no {trusted} keyring: made {fallback} "
                      f"({serial:#x}) in the user keyring")
        added = 0
        for path in keys:
            try:
                sys.apply(AddKey(path, serial, name))
                added += 1
            except OSError as err:
                failed(*key_refusal(path, name, err))
        return f"{added} of {len(keys)} keys into {name}", added

    def _policy(self, ctx: BootContext, policy: str | None, required: bool,
                failed: Failed) -> str:
        sys = ctx.sys
        if not policy:
            if required:
                failed("IMA is required but this image has no IMA policy",
                       "rebuild the image with --ima-policy FILE")
            return ""
        if not sys.exists(policy):
            failed(f"the IMA policy {policy} is missing from the image", "rebuild the image")
            return ""
        if not sys.exists(IMA_POLICY_FILE):
            failed(f"the kernel takes no IMA policy now ({IMA_POLICY_FILE} is missing: a "
                   "policy was loaded already, and without CONFIG_IMA_WRITE_POLICY only one "
                   "is taken per boot)", "see dmesg")
            return ""
        try:
            rules = sys.apply(LoadImaPolicy(policy))
            return f"IMA policy {policy} loaded ({rules} rules)"
        except OSError as err:
            if err.errno != errno.EACCES:
                failed(f"the kernel refused the IMA policy {policy}: {err.strerror}",
                       "dmesg names the rule (ima: policy update failed); a rule naming "
                       "SELinux types needs the selinux stage's policy loaded")
                return ""
        try:  # EACCES: the kernel wants a signed policy, which it reads by path
            sys.apply(LoadImaPolicy(policy, by_path=True))
        except OSError as err:
            failed(f"the kernel requires a signed IMA policy and refused {policy}: "
                   f"{err.strerror}", "build the image with --ima-sign-key KEY whose "
                   "certificate the kernel trusts (--ima-cert)")
            return ""
        return f"IMA policy {policy} loaded by path (the kernel requires a signed policy)"

    def _evm(self, ctx: BootContext, mode: int | None, keys: int, labels: bool,
             failed: Failed) -> str:
        if not mode:
            return ""
        if labels and not ctx.sys.exists(SELINUX_ENFORCE):
            failed(f"EVM not enabled ({evm_bits(mode)}): the image's security.evm signatures "
                   "cover SELinux labels, and SELinux is not active on this boot, so EVM "
                   "would refuse every file IMA appraises",
                   "boot with security=selinux selinux=1, or build the image with "
                   "--selinux-policy none")
            return ""
        if not ctx.sys.exists(EVM_FILE):
            failed(f"the kernel has no EVM ({EVM_FILE} is missing)",
                   "boot a kernel with CONFIG_EVM, or build without evm_mode")
            return ""
        if mode & EVM_INIT_X509 and not keys:
            failed(f"EVM not enabled ({evm_bits(mode)}): no key is in the .evm/_evm keyring "
                   "(see above), and EVM would then refuse every file IMA appraises",
                   "build the image with --evm-cert DER, the certificate of --evm-sign-key")
            return ""
        try:
            ctx.sys.apply(EnableEvm(mode))
        except OSError as err:
            hint = "EVM's setup was completed already (EVM_SETUP_COMPLETE)" \
                if err.errno == errno.EPERM else "see security/integrity/evm in the kernel"
            failed(f"the kernel refused EVM mode {evm_bits(mode)}: {err.strerror}", hint)
            return ""
        return f"EVM enabled ({evm_bits(mode)})"
