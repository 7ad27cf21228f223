"""Data for the lessons: toy scenes now; the shared synthetic dataset comes with lesson data."""
