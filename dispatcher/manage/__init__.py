"""Management: the one service layer the CLI, the HTTP API and the console call."""
