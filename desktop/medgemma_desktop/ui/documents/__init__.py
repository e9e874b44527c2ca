"""Document collections and their citations."""
