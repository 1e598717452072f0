"""One router per resource: files, tuning jobs, models, and the health check."""
