"""Runtime state in Redis (routing data, callback history) and the embedded server."""
