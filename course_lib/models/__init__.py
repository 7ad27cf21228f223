"""Small models, one per file, that train from scratch on a laptop CPU in minutes."""
