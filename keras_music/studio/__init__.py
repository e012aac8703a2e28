"""The studio: a local web page and JSON API to generate, hear and blind-compare pieces (python -m keras_music.studio)."""
