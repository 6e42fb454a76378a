"""Services: what the platform does for a caller, written once for every edge.

The REST API's routers and the web portal's handlers parse their input, call a function here, and render
what it returns; the rules (who owns what, what may be created, how a chat request is served, metered and
logged) live here and nowhere else. Services take the database session, the caller's project and the
server's parts as arguments, raise domain errors (``tempering.errors``), and know nothing of HTTP.
"""
