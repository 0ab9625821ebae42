"""One module per ``charrnn`` subcommand; each defines ``command`` (a click command).

Modules import only click and the standard library at top level; everything heavy is
imported inside the command function.
"""
