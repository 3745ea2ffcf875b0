"""Operating ezq: listing and replaying jobs, the status screen, purging old content."""
