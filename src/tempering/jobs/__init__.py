"""Jobs: the queue in the database, workers that claim jobs under a lease, and the runner that trains.

A worker claims a job atomically, runs it in its own subprocess (``tempering.jobs.runner``), and keeps the
lease alive with a heartbeat; a job whose lease expires (its worker died) is taken over by another worker
and resumes from its last checkpoint. Knows nothing about HTTP.
"""
