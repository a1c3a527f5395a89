"""Services: the logic behind the API and CLI. Each function takes a Session and plain values,
raises crowbar.errors on bad input, and returns JSON-ready dicts."""
