"""Local documents the model answers from: read, chunked, indexed in SQLite FTS5, searched, cited. No Qt.

`readers` turns a file into pages of text, `chunking` cuts pages into passages sized in model
tokens, `collection` keeps one named collection's index in its own database, `collections`
finds and deletes them in the data folder, and `passages` chooses what goes into a prompt.
"""
