"""Helpers of the real-browser tests (test_slides.py, test_lab_widgets.py): headless Chromium."""
