"""RQ queues, job functions and the worker process."""
