"""Moved to ``fastapps_auth.cli.options_info`` (beside the CLI that lists plugins); this name keeps working."""

from __future__ import annotations

from fastapps_auth.cli.options_info import (
    COMPUTED,
    REQUIRED,
    OptionInfo,
    default_value,
    nested_models,
    options_of,
    type_label,
)

__all__ = ["COMPUTED", "REQUIRED", "OptionInfo", "default_value", "nested_models", "options_of", "type_label"]
