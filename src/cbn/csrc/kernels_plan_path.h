/* kernels_plan_path.h - which path a call takes, told by the decisions the kernels make
 * (plan_job, cf_by_groups, cl_by_whole_tiles), for the tests that check every tagged test case
 * reaches its path (declared in plan.h).
 *
 * A part of kernels_impl.h (after kernels_entry.h).
 */

void FN(cbn_plan_path)(cbn_path *path, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                       int n_threads, cbn_path_op op)
{
    FN(job) jb;
    memset(&jb, 0, sizeof jb);
    jb.op = op == CBN_PATH_TRAIN ? OP_TRAIN : op == CBN_PATH_BACKWARD ? OP_BACKWARD : OP_INFER;
    jb.apply_only = op == CBN_PATH_INFER;
    FN(plan_job)(&jb, N, C, S, layout, n_threads < 1 ? 1 : n_threads);
    memset(path, 0, sizeof *path);
    path->plan = jb.plan;
    path->stream = jb.stream;
    if (jb.plan.channels_last) {
        path->cl_whole_tiles = FN(cl_by_whole_tiles)(&jb);
    } else if (jb.apply_only) {
        path->cf_apply_only = 1;
    } else {
        path->cf_groups = jb.plan.M > 0 && FN(cf_by_groups)(&jb);
    }
}
