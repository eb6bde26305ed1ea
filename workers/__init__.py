"""SAQ queues, task functions, cron jobs and the outbox relay.

Tasks are thin: they open a unit of work and call domain services.
"""
