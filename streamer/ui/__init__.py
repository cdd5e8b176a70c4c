"""What a person looks at: the terminal dashboard, today's totals, the history plot, and the
activity colours they share."""
