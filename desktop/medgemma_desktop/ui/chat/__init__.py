"""The conversation: messages as they stream, the composer, attachments, the list of chats."""
