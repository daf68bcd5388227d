"""Asterisk Manager Interface: the sans-IO protocol and the asyncio client."""

from .client import (
    AMIActionTimeout,
    AMIAuthError,
    AMIClient,
    AMIConnectionError,
    AMIDisconnected,
    LinkState,
    backoff_delay,
)
from .protocol import (
    NEED_DATA,
    Action,
    AMIConnection,
    AMIError,
    AMIProtocolError,
    Banner,
    Closed,
    Event,
    Message,
    Response,
    encode_action,
    ends_event_list,
    starts_event_list,
)

__all__ = [
    "NEED_DATA",
    "AMIActionTimeout",
    "AMIAuthError",
    "AMIClient",
    "AMIConnection",
    "AMIConnectionError",
    "AMIDisconnected",
    "AMIError",
    "AMIProtocolError",
    "Action",
    "Banner",
    "Closed",
    "Event",
    "LinkState",
    "Message",
    "Response",
    "backoff_delay",
    "encode_action",
    "ends_event_list",
    "starts_event_list",
]
