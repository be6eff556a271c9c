"""A numba intrinsic that hints the CPU to bring an array element into its caches.

The CPU kernels of turbonerf (the hash encoding, the NerfTree marcher) are bound by memory
latency: each sample reads table rows or voxels at scattered addresses. Asking for the rows of a
sample a few iterations ahead lets those misses overlap with the work on the current one.
"""

from __future__ import annotations

from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

# LLVM >= 15 has opaque pointers, which changed the name of the prefetch intrinsic
_PREFETCH_NAME = "llvm.prefetch.p0" if llvm_binding.llvm_version_info[0] >= 15 else "llvm.prefetch.p0i8"


@intrinsic
def prefetch(typingctx, arr, idx):
    """Hint the CPU to fetch ``arr[idx]`` (a 1-D array, any index) into the cache (for reading; a write
    to it then finds it there too); no effect on results, and no bounds check (an address past the end is harmless)."""

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, _PREFETCH_NAME)
        # (address, rw = 0: read, locality = 3: keep in all cache levels, cache type = 1: data)
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(arr, idx), codegen
