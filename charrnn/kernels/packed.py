"""Matrix products with pre-packed weights: our own register-tiled micro-kernel.

Why: the per-step recurrent product of a layer is small, (B, H) x (H, G*H) with B ~ 50,
and its right-hand side is the same weight matrix at every step.  A general BLAS call
repacks that whole matrix into its own panel layout on every call (OpenBLAS, AVX-512,
one core: (50, 256) x (256, 1024) at 135 GFLOP/s, where a large product reaches 238).
Here the weights are packed ONCE per pass (:func:`packed`) and every call streams the
packed panels through a micro-kernel that keeps its whole output tile in vector
registers: the same product measured 245 GFLOP/s on one core, which is this core's peak
(2 FMA pipes x 16 float32 lanes x 2 flops at ~3.9 GHz), for 25 rows as for 50.

Layout.  A (K, N) right-hand side ``w`` is packed into ``wp`` (P, K, NR), P = ceil(N/NR):
panel p holds columns p*NR .. p*NR+NR-1, row k of the panel contiguous, zero past N.
NR is two vector registers of the host (float32: 32 columns with AVX-512, 16 with AVX2).

Micro-kernel.  C[i:i+m, panel] = bias + A[i:i+m, :] @ panel for a tile of m <= MR rows
of A (MR = 12 with 32 vector registers, 6 with 16), as one loop over k that broadcasts
A[r, k] and does 2*m fused multiply-adds into 2*m register accumulators (which start at
the bias, or at zero).  It is a numba ``intrinsic`` (numba's own loops cannot pin an
accumulator tile in registers), so it compiles, inlines and caches like any other
kernel; the vector width is chosen from the host CPU that numba compiles for.  The k
loop is inline assembly on x86-64 with AVX2 and FMA (16 registers: 12 accumulators, 2
panel vectors, 1 broadcast, fixed by the constraints; LLVM's own register allocation
spilled an accumulator in some copies, see :func:`_asm_loop`) and LLVM IR elsewhere.
M rows are cut into tiles of near-equal height.

Where it is used: every product of the recurrent layers except the weight gradients
(charrnn.kernels.steps: recurrent products, input projections and input gradients, one
step's rows at a time) and the head's two products (charrnn.model.network, :func:`matmul` with
rows shared between threads).  The weight gradients, sums over all T*B rows, stay with
numpy's BLAS.

Numbers.  Every element of C is one chain of fused multiply-adds over k = 0..K-1 in
order, starting from the bias or zero, whichever tile, row range or thread computes it;
so a product gives the same bits with one thread or several.

Dimension letters: M rows of A (the batch), K the reduction, N columns of C.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils, config
from numba.extending import intrinsic

from .jit import jit, pjit

_I64 = ir.IntType(64)
_I32 = ir.IntType(32)


def _host_features() -> dict:
    """LLVM's view of the host CPU's features ({} if it cannot tell)."""
    try:
        import llvmlite.binding as llvm
        return dict(llvm.get_host_cpu_features())
    except Exception:                                     # pragma: no cover
        return {}


def _vector_bits(feats: dict) -> int:
    """Width of the host's vector registers that numba's code may use."""
    if config.CPU_NAME and config.CPU_NAME != "host":     # a portable (generic) build
        return 128
    if feats.get("avx512f", False):
        return 512
    if feats.get("avx2", False) or feats.get("avx", False):
        return 256
    return 128


def _has_avx2_fma(feats: dict) -> bool:
    """x86-64 with AVX2 and FMA (what :func:`_asm_loop`'s instructions need)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if not (feats.get("avx2", False) and feats.get("fma", False)):
        return False
    try:
        import llvmlite.binding as llvm
        llvm.initialize_native_asmparser()    # LLVM parses inline assembly with it
    except Exception:                                     # pragma: no cover
        return False
    return True


_FEATURES = _host_features()
VECTOR_BITS = _vector_bits(_FEATURES)
NV = 2                                   # vector registers per row of the output tile
MR = 12 if VECTOR_BITS == 512 else 6     # rows of the tile: 2*MR accumulators + 3 regs
#: the k loop in inline assembly (:func:`_asm_loop`) on x86-64 with AVX2 and FMA (16
#: vector registers); LLVM IR (:func:`_ir_loop`) elsewhere
ASM_LOOP = VECTOR_BITS == 256 and _has_avx2_fma(_FEATURES)


def panel_width(dtype) -> int:
    """NR, the columns of one packed panel, for ``dtype``."""
    return NV * VECTOR_BITS // (8 * np.dtype(dtype).itemsize)


def packed_shape(K: int, N: int, dtype) -> tuple[int, int, int]:
    """Shape (P, K, NR) of the packed form of a (K, N) matrix."""
    nr = panel_width(dtype)
    return ((N + nr - 1) // nr, K, nr)


def _at(builder, base, index, ty, size):
    """Pointer of type ``ty*`` to element ``index`` (i64) of ``size`` bytes after the
    address ``base`` (i64)."""
    return builder.inttoptr(builder.add(base, builder.mul(index, _i64(size))),
                            ty.as_pointer())


def _i64(n: int):
    return ir.Constant(_I64, n)


def _vector_type(double: bool):
    """(element type, vector register type, element bytes) of the micro-kernel."""
    fty = ir.DoubleType() if double else ir.FloatType()
    size = 8 if double else 4
    return fty, ir.VectorType(fty, VECTOR_BITS // (8 * size)), size


def _no_unroll(module):
    """Loop metadata that keeps LLVM from unrolling a loop (a loop ID: a node whose first
    operand is itself; the unique placeholder keeps llvmlite from reusing a node)."""
    disable = module.add_metadata([ir.MetaDataString(module, "llvm.loop.unroll.disable")])
    loop_id = module.add_metadata([disable, ir.MetaDataString(
        module, f"charrnn.packed.loop.{len(module.metadata)}")])
    loop_id.operands = (loop_id, disable)
    return loop_id


def _ir_loop(builder, rows, double, init, a_i, rs_a, cs_a, w_i, k_v):
    """The k loop in LLVM IR (any target): returns the rows x NV accumulators after it.
    With 16 vector registers it is not unrolled: unrolled, each step needs NV more
    registers for the next panel row, and an accumulator ends up on the stack.  Not
    unrolled it can still spill (measured on Zen 3: 5 rows, 35 GFLOP/s), which is why
    AVX2 hosts use :func:`_asm_loop`."""
    fty, vty, size = _vector_type(double)
    vw = vty.count
    fma = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vty, [vty] * 3),
        f"llvm.fma.v{vw}{'f64' if double else 'f32'}")

    start = builder.basic_block
    loop = builder.append_basic_block("packed.loop")
    done = builder.append_basic_block("packed.done")
    undef = ir.Constant(vty, ir.Undefined)
    splat = ir.Constant(ir.VectorType(_I32, vw), [0] * vw)
    row_a = [builder.mul(_i64(r), rs_a) for r in range(rows)]
    builder.branch(loop)

    builder.position_at_end(loop)
    k = builder.phi(_I64)
    k.add_incoming(_i64(0), start)
    acc = [[builder.phi(vty) for _ in range(NV)] for _ in range(rows)]
    for row in acc:
        for j, p in enumerate(row):
            p.add_incoming(init[j], start)
    w_row = builder.mul(k, _i64(NV * vw))
    w = [builder.load(_at(builder, w_i, builder.add(w_row, _i64(j * vw)), vty, size), typ=vty,
                      align=size)
         for j in range(NV)]
    k_a = builder.mul(k, cs_a)
    new = []
    for r in range(rows):
        s = builder.load(_at(builder, a_i, builder.add(row_a[r], k_a), fty, size), typ=fty,
                         align=size)
        v = builder.shuffle_vector(builder.insert_element(undef, s, ir.Constant(_I32, 0)),
                                   undef, splat)
        new.append([builder.call(fma, [v, w[j], acc[r][j]]) for j in range(NV)])
    k_next = builder.add(k, _i64(1))
    k.add_incoming(k_next, loop)
    for r in range(rows):
        for j in range(NV):
            acc[r][j].add_incoming(new[r][j], loop)
    back = builder.cbranch(builder.icmp_signed("<", k_next, k_v), loop, done)
    if VECTOR_BITS < 512:               # 16 registers; with 32 (AVX-512) there is room
        back.set_metadata("llvm.loop", _no_unroll(builder.module))
    builder.position_at_end(done)
    return new


def _asm_loop(builder, rows, double, init, a_i, rs_a, cs_a, w_i, k_v):
    """The k loop as x86-64 AVX2 inline assembly (AT&T syntax): the same fused
    multiply-adds in the same order as :func:`_ir_loop`, so the same bits, but the
    registers are fixed by the constraints instead of left to LLVM.

    Why: with 2*rows accumulators, NV panel vectors and a broadcast in 16 registers
    there is one register to spare at rows = 6, and LLVM's scheduler, hoisting
    broadcasts, sometimes ran out and kept an accumulator on the stack: its store and
    reload put store-forwarding latency into the loop's dependency chain.  Measured on
    Zen 3 (AVX2), (25, 256) x (256, 1024) on one core: 50-55 GFLOP/s with that spill,
    85-97 without, and which one a process ran depended on the order it had compiled or
    loaded its kernels (numba binds every caller of ``_tile`` to the first copy loaded,
    and the copies, optimised in different modules, differed in that spill).

    Registers: the 2*rows accumulators (tied in/out), two panel vectors and one
    broadcast (early-clobber scratch); A's rows r = 0, 1, 2 at ``a + r*rs`` and
    r = 3, 4, 5 at ``b + (r-3)*rs`` with ``b = a + 3*rs``; both advance by A's column
    stride, the panel by one row (NV vectors), ``k`` counts down to zero.  K >= 1."""
    _fty, vty, size = _vector_type(double)
    sfx = "d" if double else "s"
    n_acc = rows * NV
    rs_b = builder.mul(rs_a, _i64(size))            # bytes between rows
    cs_b = builder.mul(cs_a, _i64(size))            # bytes between columns
    b_i = builder.add(a_i, builder.mul(rs_b, _i64(3)))
    # operands: outputs 0..n_acc-1 accumulators, then a, b, w, k, then scratch W0 W1 T;
    # inputs: the tied accumulators and a, b, w, k, then the two strides
    ia, ib, iw, ik = n_acc, n_acc + 1, n_acc + 2, n_acc + 3
    w0, w1, t = n_acc + 4, n_acc + 5, n_acc + 6
    n_out = n_acc + 7
    irs, ics = n_out + n_acc + 4, n_out + n_acc + 5
    rows_at = [f"(${ia})", f"(${ia},${irs},1)", f"(${ia},${irs},2)",
               f"(${ib})", f"(${ib},${irs},1)", f"(${ib},${irs},2)"]
    body = ["1:", f"vmovup{sfx} (${iw}), ${w0}", f"vmovup{sfx} {VECTOR_BITS // 8}(${iw}), ${w1}"]
    for r in range(rows):
        body += [f"vbroadcasts{sfx} {rows_at[r]}, ${t}",
                 f"vfmadd231p{sfx} ${w0}, ${t}, ${r * NV}",
                 f"vfmadd231p{sfx} ${w1}, ${t}, ${r * NV + 1}"]
    body += [f"add $${NV * VECTOR_BITS // 8}, ${iw}", f"add ${ics}, ${ia}", f"add ${ics}, ${ib}",
             f"dec ${ik}", "jnz 1b"]
    constraints = (["=x"] * n_acc + ["=r"] * 4 + ["=&x"] * 3
                   + [str(i) for i in range(n_acc + 4)] + ["r", "r"]
                   + ["~{cc}", "~{memory}"])
    ret = ir.LiteralStructType([vty] * n_acc + [_I64] * 4 + [vty] * 3)
    args = [init[j] for _ in range(rows) for j in range(NV)] + [a_i, b_i, w_i, k_v, rs_b, cs_b]
    fnty = ir.FunctionType(ret, [a.type for a in args])
    out = builder.asm(fnty, "\n".join(body), ",".join(constraints), args, True,
                      name="packed.tile")
    return [[builder.extract_value(out, r * NV + j) for j in range(NV)] for r in range(rows)]


def _micro(rows: int, asm: bool | None = None):
    """The micro-kernel intrinsic for a tile of ``rows`` rows:
    ``kern(c, a_addr, rs_a, cs_a, w_addr, c_addr, ldc, K)`` writes
    C[r, 0:NR] = sum_k A[r, k] * W[k, 0:NR] for r < rows, with A[r, k] at
    a_addr + (r*rs_a + k*cs_a) elements, the packed panel W (K, NR) at w_addr and C's row r
    at c_addr + r*ldc elements.  ``c`` (an array of the dtype) only types the call.
    K >= 1.  ``asm``: the k loop in inline assembly (:func:`_asm_loop`, up to 6 rows) or
    in LLVM IR (:func:`_ir_loop`); default :data:`ASM_LOOP` (the tests compare the two).
    The assembly is for 256-bit registers: ``asm=True`` where :data:`ASM_LOOP` is false
    (another host, or a portable build) is a ValueError, not an assembler error."""
    if asm is None:
        asm = ASM_LOOP
    elif asm and not ASM_LOOP:
        raise ValueError("the assembly k loop needs x86-64 with AVX2 and FMA and 256-bit "
                         f"vectors (this build: {VECTOR_BITS}-bit)")

    @intrinsic
    def kern(typingctx, c, a_addr, rs_a, cs_a, w_addr, b_addr, c_addr, ldc, K):
        if not isinstance(c, types.Array) or c.dtype not in (types.float32, types.float64):
            return None
        double = c.dtype == types.float64
        sig = types.void(c, types.intp, types.intp, types.intp, types.intp, types.intp,
                         types.intp, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            _, a_i, rs_a_v, cs_a_v, w_i, b_i, c_i, ldc_v, k_v = args
            _fty, vty, size = _vector_type(double)
            vw = vty.count

            entry = builder.basic_block
            load_bias = builder.append_basic_block("packed.bias")
            start = builder.append_basic_block("packed.start")
            zero = ir.Constant(vty, [0.0] * vw)
            builder.cbranch(builder.icmp_unsigned("!=", b_i, _i64(0)), load_bias, start)

            builder.position_at_end(load_bias)          # accumulators start at the bias
            bias = [builder.load(_at(builder, b_i, _i64(j * vw), vty, size), typ=vty,
                                 align=size)
                    for j in range(NV)]
            builder.branch(start)

            builder.position_at_end(start)
            init = []
            for j in range(NV):
                phi = builder.phi(vty)
                phi.add_incoming(zero, entry)
                phi.add_incoming(bias[j], load_bias)
                init.append(phi)
            if asm and rows <= 6:
                new = _asm_loop(builder, rows, double, init, a_i, rs_a_v, cs_a_v, w_i, k_v)
            else:
                new = _ir_loop(builder, rows, double, init, a_i, rs_a_v, cs_a_v, w_i, k_v)

            for r in range(rows):
                c_row = builder.mul(_i64(r), ldc_v)
                for j in range(NV):
                    builder.store(new[r][j],
                                  _at(builder, c_i, builder.add(c_row, _i64(j * vw)), vty, size),
                                  align=size)
            return context.get_dummy_value()

        return sig, codegen

    return kern


# one micro-kernel per tile height 1..12 (those above MR are never called)
_k1, _k2, _k3, _k4, _k5, _k6, _k7, _k8, _k9, _k10, _k11, _k12 = (
    _micro(r) for r in range(1, 13))


@jit
def _tile(rows, c, a_addr, rs, cs, w_addr, b_addr, c_addr, ldc, K):
    """The micro-kernel for a tile of ``rows`` (1..MR) rows.  ``MR`` is a compile-time
    constant, so with MR = 6 the branches of 7..12 rows, never taken, are not compiled
    into _tile or into the kernels that inline a copy of it."""
    if MR >= 12 and rows == 12:
        _k12(c, a_addr, rs, cs, w_addr, b_addr, c_addr, ldc, K)
    elif MR >= 11 and rows == 11:
        _k11(c, a_addr, rs, cs, w_addr, b_addr, c_addr, ldc, K)
    elif MR >= 10 and rows == 10:
        _k10(c, a_addr, rs, cs, w_addr, b_addr, c_addr, ldc, K)
    elif MR >= 9 and rows == 9:
        _k9(c, a_addr, rs, cs, w_addr, b_addr, c_addr, ldc, K)
    elif MR >= 8 and rows == 8:
        _k8(c, a_addr, rs, cs, w_addr, b_addr, c_addr, ldc, K)
    elif MR >= 7 and rows == 7:
        _k7(c, a_addr, rs, cs, w_addr, b_addr, c_addr, ldc, K)
    elif rows == 6:
        _k6(c, a_addr, rs, cs, w_addr, b_addr, c_addr, ldc, K)
    elif rows == 5:
        _k5(c, a_addr, rs, cs, w_addr, b_addr, c_addr, ldc, K)
    elif rows == 4:
        _k4(c, a_addr, rs, cs, w_addr, b_addr, c_addr, ldc, K)
    elif rows == 3:
        _k3(c, a_addr, rs, cs, w_addr, b_addr, c_addr, ldc, K)
    elif rows == 2:
        _k2(c, a_addr, rs, cs, w_addr, b_addr, c_addr, ldc, K)
    else:
        _k1(c, a_addr, rs, cs, w_addr, b_addr, c_addr, ldc, K)


@jit
def _pack(w, wp):
    """wp (P, K, NR) <- w (K, N), any strides; columns past N are zero.  Copied in tiles
    of 16 rows by NR columns, so that both a row-major w and a transposed view (W^T of a
    row-major W) are read in runs of contiguous elements."""
    K, N = w.shape
    P, _, nr = wp.shape
    for p in range(P):
        j0 = p * nr
        n = min(nr, N - j0)
        for k0 in range(0, K, 16):
            k1 = min(K, k0 + 16)
            for j in range(n):
                for k in range(k0, k1):
                    wp[p, k, j] = w[k, j0 + j]
            for k in range(k0, k1):
                for j in range(n, nr):
                    wp[p, k, j] = 0


#: elements of w per thread of a row-major pack (smaller: one thread)
PACK_SPLIT = 1 << 16


@pjit
def _pack_rows(nth, w, wp):
    """wp (P, K, NR) <- w (K, P*NR) with contiguous rows, ``nth`` threads taking ranges
    of panels.  (numpy's copy of the same (K, P, NR) view moves 64 bytes per inner loop:
    LSTM 2x256's W_hh, 1 MB, 440-620 us from memory, here 110-240 with two threads.)"""
    P, K, nr = wp.shape
    for i in prange(nth):
        for p in range(P * i // nth, P * (i + 1) // nth):
            src = w[:, p * nr:(p + 1) * nr]
            dst = wp[p]
            for k in range(K):
                for j in range(nr):
                    dst[k, j] = src[k, j]


@jit
def _panel(a, wp, p, bias, c):
    """C[:, p*NR : p*NR+NR] = bias + A @ panel p (no bias when ``bias`` is empty), in
    tiles of at most MR rows of near-equal height (M = 25: 9, 8, 8, not 12, 12, 1: a
    one-row tile waits on its two FMA chains).  The last panel, when narrower than NR,
    is computed into a scratch tile (and its zero-padded bias) and copied."""
    M, K = a.shape
    N = c.shape[1]
    nr = wp.shape[2]
    s = a.itemsize
    j0 = p * nr
    n = min(nr, N - j0)
    rs, cs = a.strides[0] // s, a.strides[1] // s
    ab = a.ctypes.data
    wb = wp[p].ctypes.data
    tiles = (M + MR - 1) // MR
    if n == nr:
        ldc = c.strides[0] // s
        bb = bias.ctypes.data + j0 * s if bias.shape[0] > 0 else 0
        cb = c.ctypes.data + j0 * s
        i = 0
        for q in range(tiles):
            rows = M * (q + 1) // tiles - i
            _tile(rows, c, ab + i * rs * s, rs, cs, wb, bb, cb + i * ldc * s, ldc, K)
            i += rows
        return
    scratch = np.zeros((MR + 1, nr), c.dtype)       # MR rows of output, then the bias
    bb = 0
    if bias.shape[0] > 0:
        scratch[MR, :n] = bias[j0:j0 + n]
        bb = scratch[MR].ctypes.data
    i = 0
    for q in range(tiles):
        rows = M * (q + 1) // tiles - i
        _tile(rows, c, ab + i * rs * s, rs, cs, wb, bb, scratch.ctypes.data, nr, K)
        for r in range(rows):
            for j in range(n):
                c[i + r, j0 + j] = scratch[r, j]
        i += rows


@jit
def _mm_serial(a, wp, c):
    """c (M, N) = a (M, K) @ w, w packed in wp (P, K, NR); one thread, no bias.  Called
    once per step by the time loops: the "no bias" is an empty view of ``c``, not a new
    array."""
    if c.shape[0] > 0:
        _mm_bias(a, wp, c[0, :0], c)


@jit
def _mm_bias(a, wp, bias, c):
    """c (M, N) = bias + a (M, K) @ w, w packed in wp; one thread; bias (N,) or empty."""
    if a.shape[1] == 0:
        for i in range(c.shape[0]):
            for j in range(c.shape[1]):
                c[i, j] = bias[j] if bias.shape[0] > 0 else 0
        return
    for p in range(wp.shape[0]):
        _panel(a, wp, p, bias, c)


#: rows of A per block of the row-parallel product: a block (and its output rows) stays
#: in cache while the packed panels stream past it
ROW_BLOCK = 192


@pjit
def _mm_rows(nth, a, wp, bias, c):
    """c = bias + a @ w for a tall a (M >> B): ``nth`` threads each take a range of rows,
    in blocks of ROW_BLOCK rows."""
    M = a.shape[0]
    for i in prange(nth):
        r1 = M * (i + 1) // nth
        for r in range(M * i // nth, r1, ROW_BLOCK):
            e = min(r1, r + ROW_BLOCK)
            _mm_bias(a[r:e], wp, bias, c[r:e])


# ------------------------------------------------------------------ public, validating

def packed(w: np.ndarray, out: np.ndarray | None = None, threads: int = 1) -> np.ndarray:
    """The packed form (P, K, NR) of the (K, N) matrix ``w`` (any strides), written into
    ``out`` when given (it must have :func:`packed_shape`); up to ``threads`` threads
    share the panels of a large row-major ``w``."""
    if w.ndim != 2 or w.dtype not in (np.float32, np.float64):
        raise ValueError(f"packed: need a 2-D float32 or float64 matrix, got {w.dtype} "
                         f"{w.shape}")
    shape = packed_shape(*w.shape, w.dtype)
    if out is None:
        out = np.empty(shape, w.dtype)
    elif out.shape != shape or out.dtype != w.dtype:
        raise ValueError(f"packed: out must be {w.dtype} {shape}, got {out.dtype} {out.shape}")
    P, K, nr = shape
    if w.shape[1] == P * nr:                          # no padding
        if w.strides[1] == w.itemsize and w.strides[0] > 0:
            # contiguous rows: every panel row is one run of NR elements
            _pack_rows(max(1, min(int(threads), P, w.size // PACK_SPLIT)), w, out)
            return out
        # a transposed view (W^T of a row-major W): one strided copy of a (K, P, NR)
        # view (numpy's copy loops measured 2-4x faster than _pack on 256 x 1024;
        # numba's threads no faster than numpy's copy on this layout)
        view = w.view()
        try:
            view.shape = (K, P, nr)                  # never copies (raises instead)
        except AttributeError:
            pass
        else:
            np.copyto(out, view.transpose(1, 0, 2))
            return out
    _pack(w, out)
    return out


def _check(a, wp, out, bias):
    if a.ndim != 2 or out.ndim != 2 or wp.ndim != 3:
        raise ValueError("matmul: a and out must be 2-D and wp 3-D")
    M, K = a.shape
    P, Kw, nr = wp.shape
    if not (a.dtype == wp.dtype == out.dtype) or a.dtype not in (np.float32, np.float64):
        raise ValueError(f"matmul: dtypes differ or are not float ({a.dtype}, {wp.dtype}, "
                         f"{out.dtype})")
    if nr != panel_width(a.dtype) or Kw != K or out.shape[0] != M \
            or not (P - 1) * nr < out.shape[1] <= P * nr:
        raise ValueError(f"matmul: shapes do not fit: a {a.shape}, wp {wp.shape}, "
                         f"out {out.shape}")
    if out.size and out.strides[1] != out.itemsize or wp.size and (
            wp.strides[2] != wp.itemsize or wp.strides[1] != nr * wp.itemsize):
        raise ValueError("matmul: out rows and packed panels must be contiguous")
    if bias is None:
        return np.empty(0, a.dtype)
    if bias.shape != (out.shape[1],) or bias.dtype != a.dtype:
        raise ValueError(f"matmul: bias must be {a.dtype} ({out.shape[1]},), got "
                         f"{bias.dtype} {bias.shape}")
    return np.ascontiguousarray(bias)


def matmul(a: np.ndarray, wp: np.ndarray, out: np.ndarray, bias: np.ndarray | None = None,
           threads: int = 1) -> np.ndarray:
    """out (M, N) = bias + a (M, K) @ w, for w packed by :func:`packed`.  With
    ``threads`` > 1, numba's threads share the rows (the numbers do not change)."""
    b = _check(a, wp, out, bias)
    nth = max(1, min(int(threads), a.shape[0] // ROW_BLOCK + 1))
    if nth > 1 or a.shape[0] > ROW_BLOCK:
        # in blocks of ROW_BLOCK rows, one thread too: (2500, 256) x (256, 1024) on one
        # thread measured 137 GFLOP/s as one block, 160 in blocks (Intel Xeon)
        _mm_rows(nth, a, wp, b, out)
    else:
        _mm_bias(a, wp, b, out)
    return out


__all__ = ["MR", "ROW_BLOCK", "VECTOR_BITS", "matmul", "packed", "packed_shape",
           "panel_width"]
