"""Where samples come from: an MQTT broker, a serial port, a RabbitMQ fleet's partitions, and the
labels a recording session reads beside them. Each is a Source (streamer/core/source.py)."""
