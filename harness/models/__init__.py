"""Models: a request (local dir, hub id, reference/NAME) -> ModelInfo (`checkpoint`), weights (`loading`),
and what differs per model family (`families`)."""
