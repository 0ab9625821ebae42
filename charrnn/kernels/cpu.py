"""Everything that depends on the host CPU, in one place: what the CPU can do, which
code path the packed-weight product (:mod:`charrnn.kernels.packed`) takes, and the LLVM
IR and x86-64 inline assembly of its micro-kernel.

Detection.  :func:`host_features` asks LLVM for the host's features once, at import.
:data:`VECTOR_BITS` is the width of the vector registers numba's code may use (512 with
AVX-512F, 256 with AVX or AVX2, 128 otherwise or in a portable build with
``NUMBA_CPU_NAME`` set); :data:`MR`, the tile height, is 12 with 32 vector registers
(512-bit) and 6 with 16.  :data:`CPU_PATH` is the k loop of the micro-kernel:

* ``"asm"``: x86-64 AVX2 + FMA inline assembly (:func:`_asm_loop`), the default where the
  host has both and the vectors are 256-bit;
* ``"ir"``: LLVM IR (:func:`_ir_loop`), the default everywhere else (AVX-512, ARM, ...);
* ``"numpy"``: no micro-kernel at all: the packed product is plain numba loops over the
  packed panels (the same fused multiply-adds in the same order) and the public product
  is numpy's ``np.matmul`` (:mod:`charrnn.kernels.matmul`), for a machine on which the
  fast path cannot be built.

Switches, read ONCE, when this module is imported (every kernel that inlines the
product is compiled for the choice; charrnn.kernels.runtime keeps a separate numba
cache per choice, so cached kernels of another choice are never loaded):

``CHARRNN_CPU_PATH=asm|ir|numpy``
    force the k loop (``asm`` where the host lacks AVX2/FMA is an error at import).
``CHARRNN_VECTOR_BITS=128|256|512``
    force the vector width, hence the panel width NR and the tile height MR.  LLVM
    splits vectors wider than the host's, so 512 runs (slowly) on an AVX2 machine; the
    assembly needs 256, so ``asm`` with another width is an error, and the default path
    with a forced width other than 256 is ``ir``.

The tests run every path on one AVX2 machine through these switches
(tests/test_cpu_paths.py).
"""
from __future__ import annotations

import os

from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic

_I64 = ir.IntType(64)
_I32 = ir.IntType(32)

PATHS = ("asm", "ir", "numpy")
WIDTHS = (128, 256, 512)


def host_features() -> dict:
    """LLVM's view of the host CPU's features ({} if it cannot tell)."""
    try:
        import llvmlite.binding as llvm
        return dict(llvm.get_host_cpu_features())
    except Exception:                                     # pragma: no cover
        return {}


def _host_vector_bits(feats: dict) -> int:
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


def asm_possible(feats: dict, width: int) -> bool:
    """Whether :func:`_asm_loop` can be built: AVX2 + FMA on x86-64, 256-bit vectors."""
    return width == 256 and _has_avx2_fma(feats)


def _switch(name: str, allowed) -> str | None:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return None
    if value not in [str(a) for a in allowed]:
        raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))} "
                         f"(got {value!r})")
    return value


def choose(feats: dict, path: str | None, bits: str | None) -> tuple[int, str]:
    """(vector bits, k-loop path) for host features ``feats`` and the two switches'
    values (None: not set)."""
    width = int(bits) if bits else _host_vector_bits(feats)
    asm_ok = asm_possible(feats, width)
    if path is None:
        path = "asm" if asm_ok else "ir"
    elif path == "asm" and not asm_ok:
        raise ValueError("CHARRNN_CPU_PATH=asm needs x86-64 with AVX2 and FMA and 256-bit "
                         f"vectors (this build: {width}-bit)")
    return width, path


_FEATURES = host_features()
VECTOR_BITS, CPU_PATH = choose(_FEATURES, _switch("CHARRNN_CPU_PATH", PATHS),
                               _switch("CHARRNN_VECTOR_BITS", WIDTHS))
NV = 2                                   # vector registers per row of the output tile
MR = 12 if VECTOR_BITS == 512 else 6     # rows of the tile: 2*MR accumulators + 3 regs
#: the k loop in inline assembly (:func:`_asm_loop`) on x86-64 with AVX2 and FMA (16
#: vector registers); LLVM IR (:func:`_ir_loop`) elsewhere
ASM_LOOP = CPU_PATH == "asm"
#: whether the assembly loop could be built here (the tests compare it with the IR loop
#: whatever :data:`CPU_PATH` is)
ASM_POSSIBLE = asm_possible(_FEATURES, VECTOR_BITS)
#: no micro-kernel: plain loops in kernels, numpy's product outside them
PORTABLE = CPU_PATH == "numpy"


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


def micro(rows: int, asm: bool | None = None):
    """The micro-kernel intrinsic for a tile of ``rows`` rows:
    ``kern(c, a_addr, rs_a, cs_a, w_addr, c_addr, ldc, K)`` writes
    C[r, 0:NR] = sum_k A[r, k] * W[k, 0:NR] for r < rows, with A[r, k] at
    a_addr + (r*rs_a + k*cs_a) elements, the packed panel W (K, NR) at w_addr and C's row r
    at c_addr + r*ldc elements.  ``c`` (an array of the dtype) only types the call.
    K >= 1.  ``asm``: the k loop in inline assembly (:func:`_asm_loop`, up to 6 rows) or
    in LLVM IR (:func:`_ir_loop`); default :data:`ASM_LOOP` (the tests compare the two).
    The assembly is for 256-bit registers: ``asm=True`` where :data:`ASM_POSSIBLE` is
    false (another host, a portable build or a forced width) is a ValueError, not an assembler error."""
    if asm is None:
        asm = ASM_LOOP
    elif asm and not ASM_POSSIBLE:
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
