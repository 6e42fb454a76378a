"""Storage: the database (SQLAlchemy models, Alembic migrations, sessions) and the artifact store.

Holds pointers and state, never blobs: uploaded files and run folders live on disk under server-generated
ids. Every object belongs to a project from day one. Knows nothing about torch or HTTP.
"""
