"""What the registry knows about one kind of backbone (`<kind>:<name>` in `backbones.<name>.model`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .base import Backbone


def _nothing_to_check(name: str) -> None:
    return None


def _unknown_layout(name: str) -> Backbone | None:
    return None


@dataclass(frozen=True)
class Source:
    """How to build a kind of backbone, and what can be checked about it before any job runs.

    build(name, weights, final_norm, seed) -> the frozen Backbone on the CPU;
    check(name) rejects a bad name with a ConfigError;
    layout(name) -> a Backbone whose blocks are known without weights (e.g. built on PyTorch's meta
        device), or None when only loading tells (its blocks are then checked when the job runs);
    needs_name: the spec is `kind:<name>` rather than plain `kind`;
    own_blocks_only: the top-level `features.blocks` does not apply (a baseline with one block).
    """

    build: Callable[[str, str | None, bool, int], Backbone]
    check: Callable[[str], None] = _nothing_to_check
    layout: Callable[[str], Backbone | None] = _unknown_layout
    needs_name: bool = True
    own_blocks_only: bool = False
