"""Transcribing a user's audio: load a model, read files in windows, timed words, subtitles."""
