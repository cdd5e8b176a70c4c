"""Where predictions go besides the screen: the history store, the CSV recorder, episodes and
their events, and what goes out over MQTT."""
