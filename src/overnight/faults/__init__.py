"""Fault injection: deliberate failures that stay home (loopback or the project's test hosts)."""

from .proxy import FaultProxy, FaultProxyStats, is_loopback

__all__ = ["FaultProxy", "FaultProxyStats", "is_loopback"]
