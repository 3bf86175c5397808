"""Test helpers for users of fastapps-auth (a dev issuer, token minting, fixtures)."""
