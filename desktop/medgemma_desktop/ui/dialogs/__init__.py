"""Dialogs: About, problems and notices, and the questions asked before the window exists."""
