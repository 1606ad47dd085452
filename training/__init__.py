"""Training helpers: stage presets (which parameters train) and a chat-format data collator."""
