"""Texts the user must see once, kept in one place so every command says the same thing."""

from __future__ import annotations


def password_notice() -> str:
    return (
        "Keep the password safe: it cannot be recovered, and without it the backups in this "
        "repository are lost.\nStore it in a password manager, and consider a second password "
        "with 'cairn key add'."
    )


def created_default_notice(location: str) -> str:
    return f"cairn: created a new repository at {location} (the default location).\n" + password_notice()
