"""``qsecret init``: create a profile (identity keys, prekeys, KME enrolment, settings)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from .errors import CliError
from .session import config_for, passphrase


def run_init(args: argparse.Namespace) -> int:
    """Create the profile; it is on disk only once every key is made and sealed."""
    config = config_for(args)
    sae_id = args.sae_id or config.sae_id or f"sae-{args.handle}"
    config = replace(config, sae_id=sae_id)
    if args.qkd_policy:
        config = replace(config, qkd_policy=args.qkd_policy)
    if args.kme_pki:
        from keysource.kme.pki import Pki, PkiError

        pki = Pki(Path(args.kme_pki).resolve())  # config.toml is read from anywhere
        if not pki.exists():
            raise CliError(f"{args.kme_pki} is not a KME PKI directory (no ca.pem)")
        try:
            pki.ensure(sae_ids=[sae_id])
        except PkiError as exc:
            raise CliError(str(exc)) from None
        paths = pki.sae(sae_id)
        config = replace(config, kme_ca=str(pki.ca_cert), sae_cert=str(paths.cert),
                         sae_key=str(paths.key))
    for name in ("kme_ca", "sae_cert", "sae_key"):
        value = getattr(args, name)
        if value:
            config = replace(config, **{name: str(Path(value).resolve())})
    if config.kme_url.startswith("https://") and not (
        config.kme_ca and config.sae_cert and config.sae_key
    ):
        raise CliError("an https KME needs --kme-pki DIR or --kme-ca, --sae-cert and --sae-key")
    secret = passphrase(confirm=True)
    from client.messenger.profile import create_profile

    create_profile(config, args.handle, secret)
    print(f"created profile @{args.handle} in {config.data_dir}")
    print(f"  relay {config.relay_url}   KME {config.kme_url} as SAE {config.sae_id}")
    return 0
