"""What the ``dpop`` stage stands on: proof parsing and verification, the ``htu`` comparison, server
nonces, and the replay cache (``memory://`` or ``redis://``) that remembers each proof's ``jti``.
"""
