"""Prepared data, the names other layers import, gathered from the modules that hold them:

* :mod:`charrnn.store.text`: ``decode_stream`` and ``codec_name``, the one rule by which
  charrnn reads text (``SNIFF_BYTES``, ``BOM``, ``CHUNK_BYTES``);
* :mod:`charrnn.store.sources`: ``resolve_inputs`` and ``fingerprint_sources``;
* :mod:`charrnn.store.prepare`: ``prepare`` (two streaming passes, the split writer),
  with :mod:`charrnn.store.spool` (stdin and pipes) and :mod:`charrnn.store.outdir`
  (``stop_on_sigterm``, the atomic install of the output);
* :mod:`charrnn.store.meta`: the data directory's format (``DATA_FORMAT``, ``SPLITS``,
  ``DATA_FILES``) and the checks of meta.json;
* :mod:`charrnn.store.dataset`: ``Dataset``, a prepared directory read back and verified;
* :mod:`charrnn.store.batches`: ``StreamBatches`` and ``iter_eval_batches``.
"""
from __future__ import annotations

from .batches import StreamBatches, iter_eval_batches
from .dataset import Dataset
from .meta import DATA_FILES, DATA_FORMAT, DATA_VERSION, SPLITS
from .outdir import stop_on_sigterm
from .prepare import prepare
from .sources import fingerprint_sources, resolve_inputs
from .text import BOM, CHUNK_BYTES, SNIFF_BYTES, codec_name, decode_stream

__all__ = ["prepare", "Dataset", "StreamBatches", "iter_eval_batches", "resolve_inputs",
           "fingerprint_sources", "decode_stream", "codec_name", "stop_on_sigterm",
           "SNIFF_BYTES", "BOM", "DATA_FORMAT", "DATA_VERSION", "SPLITS", "DATA_FILES",
           "CHUNK_BYTES"]
