"""Storage: the database, users, chat records and their transcripts (files or database)."""
