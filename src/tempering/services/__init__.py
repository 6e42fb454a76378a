"""Services: what a screen of the portal, a REST route and a CLI command do, as plain functions.

The edges (``api``, ``web``, ``cli``) parse their input, call a service and render its result; the rules (who
owns what, what may be created, how a chat request is served, metered and logged) live here and nowhere else.
A service takes a database session (or the ``Database`` where it must control its own transactions), the
caller's project id and the server's parts as arguments, works through the core packages (``jobs``,
``evaluate``, ``serve``, ``train``, ``data``, ``store``, ``catalog``) and raises the domain errors of
``tempering.errors``. It knows nothing about HTTP (no fastapi import, no status codes) and imports torch or
transformers only inside the functions that need them.
"""
