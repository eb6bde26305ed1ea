"""The load-test harness (``python -m benchmarks.run``) and the locust scenario (``locustfile``)."""
