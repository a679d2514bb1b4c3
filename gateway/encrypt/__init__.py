"""End-to-end encryption of outgoing mail for recipients whose keys are known.

``Encryptor.encrypt_for`` (encryptor.py) is what delivery calls for an ``encrypt`` recipient:
PGP/MIME (RFC 3156, pgp.py) when a valid OpenPGP key is known, else S/MIME (RFC 8551,
smime.py) when a valid certificate is, else ``NoKey`` with the reason, and delivery falls back to
the portal. keystore.py finds the key (the admin's keyring and certificates, then optionally
the recipient domain's Web Key Directory, wkd.py); entity.py splits a message into the headers
that stay outside and the MIME entity that is encrypted.
"""

from .encryptor import (
    Encrypted,
    Encryptor,
    NoKey,
    audit_fields,
    check_setup,
    key_problem_notice,
)

__all__ = ["Encrypted", "Encryptor", "NoKey", "audit_fields", "check_setup", "key_problem_notice"]
