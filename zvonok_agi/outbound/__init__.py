"""Outbound dialing: the originator (one call) and the campaign runner (a list)."""
