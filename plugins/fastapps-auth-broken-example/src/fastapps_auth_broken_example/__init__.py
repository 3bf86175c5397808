"""A deliberately broken plugin: importing it fails, as a plugin with a missing dependency would.

``fastapps-auth plugins`` must report it by name and distribution and still list every other plugin.
"""

from __future__ import annotations

raise ImportError("fastapps-auth-broken-example is broken on purpose (a missing dependency, say)")
