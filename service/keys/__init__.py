"""API keys for the HTTP interface: bound to tenants, or admin keys; only hashes are kept."""
