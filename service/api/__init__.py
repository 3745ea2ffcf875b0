"""The HTTP interface: enqueue jobs and read them back over JSON."""
