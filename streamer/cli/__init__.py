"""The `harstream` commands (streamer/cli/main.py builds the parser from them): the table of names,
summaries and examples, option types, the live commands' assembly, and one module per command or
small group."""
