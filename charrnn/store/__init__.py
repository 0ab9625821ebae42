"""Everything charrnn reads from or writes to disk, each file validated before use:
vocabularies (``vocab``), prepared data directories (``data``), checkpoints
(``checkpoint``), the built-in corpora (``corpora``) and safe file writing (``fsutil``)."""
