"""What the ``introspection`` stage needs behind it: the RFC 7662 client and the shared answer cache."""

from fastapps_auth.backends.introspection.client import IntrospectionClient
from fastapps_auth.backends.introspection.shared import SharedAnswers

__all__ = ["IntrospectionClient", "SharedAnswers"]
