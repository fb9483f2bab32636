"""Blind pairwise arena: SQLite store (`store`), vote page (`app`), Bradley–Terry/Elo ratings (`rank`)."""
