"""FastAGI: the sans-IO protocol, the asyncio server and the route handlers."""
