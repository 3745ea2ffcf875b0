"""The Celery side of ezq: the app, its tasks, and the plain function that runs a job."""
