"""Images in the chat: decoding (Pillow, pydicom) to pixels we own, and their private store. No Qt."""
