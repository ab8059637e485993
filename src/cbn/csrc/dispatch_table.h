/* dispatch_table.h - the kernels of level CBN_TABLE_LEVEL (v2, v3 or v4): their declarations
 * (the kernel files compiled with CBN_KERNEL_LEVEL=<level> define them) and the table of
 * pointers to them, table_<level>. Included by dispatch.c once per level, hence no guard. */

#define CBN_DECLARE_INT(name, params, args) int CBN_KL_CAT(name, CBN_TABLE_LEVEL) params;
#define CBN_DECLARE_VOID(name, params, args) void CBN_KL_CAT(name, CBN_TABLE_LEVEL) params;
CBN_KERNELS(CBN_DECLARE_INT, CBN_DECLARE_VOID)
#undef CBN_DECLARE_INT
#undef CBN_DECLARE_VOID

#define CBN_TABLE_ENTRY(name, params, args) CBN_KL_CAT(name, CBN_TABLE_LEVEL),
static const cbn_kernel_table CBN_KL_CAT(table, CBN_TABLE_LEVEL) = {
    CBN_KERNELS(CBN_TABLE_ENTRY, CBN_TABLE_ENTRY)
};
#undef CBN_TABLE_ENTRY
