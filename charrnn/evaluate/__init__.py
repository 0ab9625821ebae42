"""Scoring text with a model: loss (nats/char), bits per character, perplexity.

Everything runs through the batched forward pass (:meth:`Model.log_probs` over (B, T)
windows, the state carried from one window to the next), never the per-step sampling
kernel.

Conventions:

* Text INPUT is read by the rule prepare reads text with
  (:func:`charrnn.store.text.decode_stream`: ``encoding``/``errors``, a leading byte order
  mark dropped, NUL bytes near the start refused as binary) and normalised as the
  model's vocabulary says (:meth:`charrnn.store.vocab.Vocab.normalize`: lower-cased when the
  data was prepared with --lowercase) before it is encoded; ``--lines`` prints each line
  as it was read.
* A text is read as the continuation of a newline (or, if the vocabulary has none, of
  its first symbol; see :func:`charrnn.sampling.default_context`): that context symbol
  is fed first and EVERY character of the text is scored, so ``chars`` is the number of
  characters scored.  Several INPUT files are one text, concatenated (like ``cat``).
* Long texts are read and scored in pieces with the state carried across them, so
  scoring in windows of any size gives the one-pass result (up to float rounding).
* Characters outside the vocabulary are counted (``unknown``); with an unknown symbol
  in the vocabulary they are scored as it, otherwise they are left out of the text (the
  model reads the text without them) and a warning says how many.
* ``--lines``: each line (without its line terminator) is scored on its own, after the
  context symbol from a fresh state, or with ``carry`` as a part of the whole text
  (state carried; the newlines are read but not scored).  Lines are scored in batches
  (padded) for speed, and a line longer than :data:`LONG_LINE` characters is read and
  scored in pieces, its text spooled to a temporary file, so memory stays bounded
  even for a 1 GB line without a newline.
* ``--streams N`` (:class:`PieceScorer`): the text in pieces of :data:`PIECE`
  characters, N of them side by side as the rows of one batch, each from a fresh state
  that first reads the :data:`WARMUP` characters before it; close to the one pass, not
  equal to it, and several times faster on more than one core.
* ``--data DIR --split S``: the prepared split's token ids, laid out by
  :func:`charrnn.store.batches.iter_eval_batches` as in training's validation (its n - 1
  predictions; the first token is context).

The package: :mod:`.score` (:class:`Score`, the stream and piece scorers),
:mod:`.text` (reading INPUT, the :class:`Encoder`, scoring files and texts),
:mod:`.lines` (``--lines``) and :mod:`.split` (prepared splits: :func:`score_tokens`,
shared with training's validation).
"""
from __future__ import annotations

from .lines import LineScorer, evaluate_lines
from .score import (CALL_STEPS, PIECE, WARMUP, WINDOW, PieceScorer, Score, StreamScorer,
                    require_finite, score_ids, score_rows)
from .split import (ScoringStopped, default_data_dir, evaluate_checkpoint_split,
                    evaluate_split, score_tokens)
from .text import Encoder, evaluate_files, evaluate_text, iter_text

__all__ = ["Score", "Encoder", "StreamScorer", "PieceScorer", "LineScorer", "score_ids",
           "score_rows", "evaluate_files", "evaluate_text", "evaluate_split",
           "evaluate_checkpoint_split", "default_data_dir", "require_finite",
           "evaluate_lines", "iter_text", "score_tokens", "ScoringStopped", "WINDOW",
           "CALL_STEPS", "PIECE", "WARMUP"]
