"""The admin HTTP API (JSON, bearer token, OpenAPI) and the "Subscriber numbers" page it serves,
both over the control plane's service layer (`zvonok_agi.numbers`)."""
