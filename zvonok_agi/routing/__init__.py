"""The pure core: value types and the inbound routing decision."""
