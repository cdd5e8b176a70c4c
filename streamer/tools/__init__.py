"""Benchmarks, the soak, the figures script, private brokers and databases for tests and
benchmarks (mosquitto, RabbitMQ, PostgreSQL), and the simulated wearable (publisher)."""
