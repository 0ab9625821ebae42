"""charrnn.kernels.packed: the packed-weight product against numpy in float64, for every
tile height, narrow last panels, strided and transposed inputs, a bias, and threads
(which must not change a bit)."""
import numpy as np
import pytest

from charrnn.kernels import cpu
from charrnn.kernels import packed as P
from charrnn.kernels.matmul import matmul


def _ref(a, w, bias=None):
    out = a.astype(np.float64) @ w.astype(np.float64)
    return out if bias is None else out + bias


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_tile_height_and_panel_width(dtype):
    rng = np.random.default_rng(0)
    nr = P.panel_width(dtype)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for M in range(1, 2 * P.MR + 3):
        for N in (1, nr - 1, nr, nr + 3, 3 * nr):
            K = 1 + (M * 7 + N) % 19
            a = rng.standard_normal((M, K)).astype(dtype)
            w = rng.standard_normal((K, N)).astype(dtype)
            out = np.full((M, N), np.nan, dtype)
            matmul(a, P.packed(w), out)
            np.testing.assert_allclose(out, _ref(a, w), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_strided_inputs_bias_and_threads(dtype):
    rng = np.random.default_rng(1)
    M, K, N = 450, 37, 70                          # > 2 row blocks, a narrow last panel
    a = rng.standard_normal((M, K)).astype(dtype)
    w = rng.standard_normal((N, K)).astype(dtype).T          # transposed view (K, N)
    b = rng.standard_normal(N).astype(dtype)
    wp = P.packed(w)
    np.testing.assert_array_equal(wp, P.packed(np.ascontiguousarray(w)))
    one = matmul(a, wp, np.empty((M, N), dtype), bias=b)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(one, _ref(a, w, b), rtol=tol, atol=tol)
    for threads in (2, 3):
        np.testing.assert_array_equal(
            matmul(a, wp, np.empty((M, N), dtype), bias=b, threads=threads), one)
    at = np.asfortranarray(a)                                   # columns contiguous
    np.testing.assert_array_equal(matmul(at, wp, np.empty((M, N), dtype), bias=b), one)
    wide = np.zeros((M, N + 5), dtype)                         # out rows with a stride
    matmul(a[:, :K], wp, wide[:, :N], bias=b)
    np.testing.assert_array_equal(wide[:, :N], one)
    assert not wide[:, N:].any()


def test_packed_layout_and_padding():
    w = np.arange(12, dtype=np.float32).reshape(3, 4)           # K=3, N=4
    wp = P.packed(w)
    nr = P.panel_width(np.float32)
    assert wp.shape == (1, 3, nr) == P.packed_shape(3, 4, np.float32)
    np.testing.assert_array_equal(wp[0, :, :4], w)
    assert not wp[0, :, 4:].any()
    full = np.arange(3 * 2 * nr, dtype=np.float32).reshape(3, 2 * nr)
    np.testing.assert_array_equal(P.packed(full)[1], full[:, nr:])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_pack_path_gives_the_same_panels(dtype, monkeypatch):
    """Row-major (numba, panels shared between threads), transposed (numpy's copy),
    padded and strided (the general loop): all the same layout, for any thread count."""
    monkeypatch.setattr(P, "PACK_SPLIT", 1)             # small matrices split too
    nr = P.panel_width(dtype)
    rng = np.random.default_rng(0)
    for K, N in [(7, 3 * nr), (5, nr), (6, 2 * nr + 3)]:
        w = rng.standard_normal((K, N)).astype(dtype)
        want = np.zeros(P.packed_shape(K, N, dtype), dtype)
        for p in range(want.shape[0]):
            cols = w[:, p * nr:(p + 1) * nr]
            want[p, :, :cols.shape[1]] = cols
        for src in (w, np.asfortranarray(w), w[::-1][::-1]):
            for th in (1, 2, 3, 5):
                np.testing.assert_array_equal(P.packed(src, threads=th), want)
        np.testing.assert_array_equal(P.packed(np.repeat(w, 2, axis=0)[::2]), want)


def test_empty_reduction_and_errors():
    a = np.ones((4, 0), np.float32)
    out = np.full((4, 3), np.nan, np.float32)
    matmul(a, P.packed(np.ones((0, 3), np.float32)), out, bias=np.arange(3, dtype=np.float32))
    np.testing.assert_array_equal(out, np.tile(np.arange(3, dtype=np.float32), (4, 1)))
    wp = P.packed(np.ones((5, 3), np.float32))
    with pytest.raises(ValueError, match="shapes do not fit"):
        matmul(np.ones((4, 6), np.float32), wp, np.empty((4, 3), np.float32))
    with pytest.raises(ValueError, match="dtypes differ"):
        matmul(np.ones((4, 5)), wp, np.empty((4, 3), np.float32))
    with pytest.raises(ValueError, match="bias must be"):
        matmul(np.ones((4, 5), np.float32), wp, np.empty((4, 3), np.float32),
                 bias=np.ones(4, np.float32))
    with pytest.raises(ValueError, match="contiguous"):
        matmul(np.ones((4, 5), np.float32), wp, np.empty((3, 4), np.float32).T)
    with pytest.raises(ValueError, match="2-D float32 or float64"):
        P.packed(np.ones((2, 2), np.int64))


def _micro_runner(micro):
    from numba import njit

    @njit
    def run(c, a_addr, rs, cs, w_addr, b_addr, c_addr, ldc, K):
        micro(c, a_addr, rs, cs, w_addr, b_addr, c_addr, ldc, K)
    return run


@pytest.mark.skipif(not cpu.ASM_POSSIBLE, reason="the inline-assembly k loop needs x86-64 with "
                    "AVX2 and FMA, and numba compiling for this host")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_assembly_loop_gives_the_ir_loops_bits(dtype):
    """The AVX2 assembly k loop and the LLVM IR one: the same bits for every tile height,
    with and without a bias, for row-major and column-major A (column stride != 1)."""
    rng = np.random.default_rng(2)
    nr = P.panel_width(dtype)
    K = 23
    w = rng.standard_normal((K, nr)).astype(dtype)
    wp = P.packed(w)
    bias = rng.standard_normal(nr).astype(dtype)
    heights = range(1, 7) if dtype == np.float32 else (1, 6)
    for rows in heights:
        asm, irl = _micro_runner(cpu.micro(rows, asm=True)), _micro_runner(cpu.micro(rows, asm=False))
        for a in (rng.standard_normal((rows, K)).astype(dtype),
                  np.asfortranarray(rng.standard_normal((rows, K)).astype(dtype))):
            s = a.itemsize
            for b_addr in (0, bias.ctypes.data):
                outs = []
                for run in (asm, irl):
                    c = np.full((rows, nr + 3), np.nan, dtype)      # ldc > NR
                    run(c, a.ctypes.data, a.strides[0] // s, a.strides[1] // s,
                        wp.ctypes.data, b_addr, c.ctypes.data, c.strides[0] // s, K)
                    outs.append(c)
                np.testing.assert_array_equal(outs[0], outs[1])
                ref = _ref(a, w, bias if b_addr else None)
                tol = 1e-12 if dtype == np.float64 else 2e-5
                np.testing.assert_allclose(outs[0][:, :nr], ref, rtol=tol, atol=tol)
                assert np.isnan(outs[0][:, nr:]).all()


def test_assembly_loop_is_refused_where_it_does_not_fit(monkeypatch):
    monkeypatch.setattr(cpu, "ASM_POSSIBLE", False)
    with pytest.raises(ValueError, match="needs x86-64 with AVX2 and FMA"):
        cpu.micro(4, asm=True)
    cpu.micro(4, asm=False)                      # the IR loop is always available
