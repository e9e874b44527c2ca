"""The Convert… dialog, which runs medgemma-convert as a child process."""
