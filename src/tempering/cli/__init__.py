"""The ``tempering`` command line: Typer commands that parse, call the core, and print with rich.

No business rules live here; domain errors become one red line and exit code 1.
"""
