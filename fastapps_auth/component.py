"""What stages and observers share: a typed options model, a name, a lifecycle.

Configuration is validated once, in the constructor (structlog's processor
model): a component that is given something it cannot handle says so there,
with a ``ConfigError`` naming the component and the key, not at the first request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fastapps_auth.clock import SYSTEM_CLOCK, Clock
from fastapps_auth.errors import ConfigError

OnError = Literal["deny", "allow"]


class ComponentOptions(BaseModel):
    """Options every component accepts. Subclasses add their own; unknown keys are errors."""

    # ``inf`` (valid TOML) would mean an unbounded wait or cache, and cannot be written as JSON.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str | None = Field(default=None, description="Name in traces, logs and metrics (default: the plugin name).")


OptionsT = TypeVar("OptionsT", bound=ComponentOptions)


def validate_options(model: type[OptionsT], data: Mapping[str, Any], *, component: str) -> OptionsT:
    """Build ``model`` from ``data``, turning pydantic's error into a ``ConfigError`` naming the key."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err.get("loc", ())) or None
        kind = err.get("type", "")
        if kind == "extra_forbidden":
            known = ", ".join(sorted(model.model_fields))
            msg = f"unknown option (known options: {known})"
        elif kind == "missing":
            msg = "is required"
        else:
            msg = str(err.get("msg", "invalid value"))
            if "input" in err and kind not in ("missing",) and not _looks_secret(key):
                msg += f" (got {err['input']!r})"
        raise ConfigError(msg, stage=component, key=key) from None


def _looks_secret(key: str | None) -> bool:
    k = (key or "").lower()
    return any(s in k for s in ("secret", "password", "dsn", "key", "token", "url"))


class Component(Generic[OptionsT]):
    """Base of stages and observers: ``__init__`` validates and precomputes, calls do the work."""

    #: The short name this component is registered under (entry point name).
    plugin_name: ClassVar[str] = ""
    #: "stage" or "observer".
    kind: ClassVar[str] = "component"
    #: The pydantic model of this component's options.
    options_model: ClassVar[type[ComponentOptions]] = ComponentOptions

    options: OptionsT
    clock: Clock
    #: Set by ``aclose()``: a closed component opens nothing again, and a closed stage refuses (503).
    closed: bool = False

    def __init__(self, options: OptionsT | None = None, /, *, clock: Clock | None = None, **kwargs: Any) -> None:
        name = kwargs.get("name")
        label = name if isinstance(name, str) and name else self.plugin_name or type(self).__name__
        if options is not None:
            if kwargs:
                raise ConfigError("pass either an options object or keyword options, not both", stage=label)
            if not isinstance(options, self.options_model):
                raise ConfigError(f"options must be {self.options_model.__name__}", stage=label)
            self.options = options
        else:
            self.options = validate_options(self.options_model, kwargs, component=label)  # type: ignore[assignment]
        self.clock = clock or SYSTEM_CLOCK
        self.name: str = self.options.name or self.plugin_name or type(self).__name__

    async def start(self) -> None:
        """Open resources now instead of at first use. Optional; the default does nothing."""

    async def probe(self) -> None:
        """Reach every service this component uses once, for ``fastapps-auth check --connect``.

        Raise an exception whose message says, in one line and without secrets, what is wrong
        (unreachable, missing table, no keys). The default does nothing: a component without services.
        """

    async def aclose(self) -> None:
        """Release pools, connections and clients, and mark the component ``closed``. Safe to call twice.

        An override releases its own resources and sets ``self.closed = True`` (or calls this).
        """
        self.closed = True

    def stats(self) -> dict[str, float]:
        """Gauges for metrics (cache sizes, key-set age, ...). Empty by default."""
        return {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
