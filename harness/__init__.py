"""Wiring for the demo, the bench and the integration tests: services, simulators, a worker.

Imports ``notifier``, ``workers`` and ``simulators``; none of them imports this.
"""
