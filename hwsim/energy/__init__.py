"""Energy, latency and on-device memory: device tables (table), cost models from backend counters
(model), training memory (memory), and a run's figures (report). Above the Backend seam: backends count,
this package turns counts into joules, seconds and bytes."""
