"""Everything charrnn reads from or writes to disk, each file validated before use:
vocabularies (``vocab``), text in and prepared data directories (``text``, ``prepare``,
``dataset``, ``batches`` and their helpers), checkpoints
(``checkpoint``), the built-in corpora (``corpora``) and safe file writing (``fsutil``)."""
