"""Jobs between the HTTP service and the workers: the queue contract every backend implements, and
the one executor that runs a job and records its outcome (used by every kind of worker)."""
