"""The batches that truncated backpropagation through time trains on
(:class:`StreamBatches`), and the same layout walked once over every prediction of a
split for scoring (:func:`iter_eval_batches`)."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ..errors import DataError


class StreamBatches:
    """Training batches for truncated BPTT over B parallel streams.

    Layout, for n tokens: S = (n - 1) // B; stream b is the contiguous slice
    ``tokens[b*S : (b+1)*S + 1]`` (S inputs and their S next-character targets).  Batch
    i holds positions ``i*T .. (i+1)*T - 1`` of every stream, so batch i+1 continues
    each stream exactly where batch i stopped and the recurrent state can be carried
    over; an epoch is ``S // T`` batches, after which the trainer resets the state and
    starts again at batch 0.  The last ``S % T`` positions of each stream and the
    ``(n - 1) % B`` trailing tokens are not trained on.  The position in the data is
    therefore just the batch index ``i`` (with the epoch), which a resumed run restores.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int):
        if getattr(tokens, "ndim", None) != 1:
            raise DataError("tokens must be a 1-D array of token ids")
        B, T = int(batch_size), int(seq_len)
        if B < 1 or T < 1:
            raise DataError(f"batch size and sequence length must be >= 1 (got {B}, {T})")
        n = len(tokens)
        if n < B * T + 1:
            raise DataError(f"training split has {n} characters; it needs at least "
                            f"B*T+1 = {B * T + 1} for --batch-size {B} --seq-len {T}; "
                            "use a smaller --batch-size or --seq-len, or more text")
        self.tokens = tokens
        self.batch_size = B
        self.seq_len = T
        self.stream_len = (n - 1) // B                                 # S
        self.batches_per_epoch = self.stream_len // T
        starts = np.arange(B, dtype=np.int64) * self.stream_len        # (B,)
        self._index = starts[:, None] + np.arange(T + 1, dtype=np.int64)  # (B, T+1)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def locate(self, iteration: int) -> tuple[int, int]:
        """(epoch, batch index) of the ``iteration``-th batch since the start (0-based)."""
        return divmod(int(iteration), self.batches_per_epoch)

    def batch(self, i: int, lo: int = 0, hi: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets of batch ``i`` for streams ``lo .. hi-1``: two (hi-lo, T)
        int64 arrays, targets the inputs shifted by one character."""
        if not 0 <= i < self.batches_per_epoch:
            raise IndexError(f"batch {i} out of range (0..{self.batches_per_epoch - 1})")
        hi = self.batch_size if hi is None else hi
        if not 0 <= lo < hi <= self.batch_size:
            raise IndexError(f"streams {lo}..{hi} out of range (0..{self.batch_size})")
        idx = self._index[lo:hi] + i * self.seq_len                    # (b, T+1)
        win = np.asarray(self.tokens[idx], dtype=np.int64)             # (b, T+1)
        return np.ascontiguousarray(win[:, :-1]), np.ascontiguousarray(win[:, 1:])

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(self.batches_per_epoch):
            yield self.batch(i)


def iter_eval_batches(tokens: np.ndarray, batch_size: int,
                      seq_len: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every next-character prediction of ``tokens`` exactly once, in a fixed order.

    The n - 1 (input, target) pairs are laid out like :class:`StreamBatches`:
    B streams of S = (n - 1) // B pairs, walked T at a time (the last window of the
    streams may be shorter, (B, T') with T' < T), carried state valid across these
    batches.  The (n - 1) - B*S trailing pairs then follow as ONE new stream, (1, T)
    windows and a last shorter one: when ``x.shape[0]`` changes, start from a fresh
    state.  Yields int64 (inputs, targets) pairs; nothing for n < 2."""
    B, T = int(batch_size), int(seq_len)
    if B < 1 or T < 1:
        raise DataError(f"batch size and sequence length must be >= 1 (got {B}, {T})")
    n = len(tokens)
    if n < 2:
        return
    S = (n - 1) // B
    if S > 0:
        starts = np.arange(B, dtype=np.int64) * S                       # (B,)
        for t0 in range(0, S, T):
            w = min(T, S - t0)
            idx = starts[:, None] + (t0 + np.arange(w + 1, dtype=np.int64))  # (B, w+1)
            win = np.asarray(tokens[idx], dtype=np.int64)                # (B, w+1)
            yield np.ascontiguousarray(win[:, :-1]), np.ascontiguousarray(win[:, 1:])
    base = B * S
    rest = (n - 1) - base
    for t0 in range(0, rest, T):
        w = min(T, rest - t0)
        win = np.asarray(tokens[base + t0:base + t0 + w + 1], dtype=np.int64)[None]  # (1, w+1)
        yield np.ascontiguousarray(win[:, :-1]), np.ascontiguousarray(win[:, 1:])


__all__ = ["StreamBatches", "iter_eval_batches"]
