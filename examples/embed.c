/*
 * embed.c - cbn's C API without Python: a training forward, its backward and a frozen inference
 * on small deterministic inputs, for both element types and both layouts, and one case of
 * 16-bit storage (bfloat16 tensors, float parameters).
 *
 * Build from the repository root with nothing but a C compiler (or: make -C examples):
 */
// cc -O3 -std=c99 -ffp-contract=off -fopenmp -Iinclude examples/embed.c src/cbn/csrc/*.c -lm -o embed
/*
 * Run:  ./embed [OUT]      writes the report to the file OUT, or to stdout without an argument.
 *
 * The report is text, one record per line, fields separated by single spaces:
 *
 *   openmp <0|1> <max threads>
 *   case <id> <f32|f64|bf16> <NCHW|NHWC> <N> <C> <H> <W> <none|relu> <momentum> <eps>
 *   array <id> <name> <count> <v0> <v1> ...
 *   error <code> <message ...>
 *
 * Values are printed with %.9g (float) or %.17g (double): enough digits to read every value back
 * exactly; bfloat16 values as the floats they are (the per-channel arrays of a bf16 case are
 * float). The arrays of a case, in this order:
 *   inputs     x, dy (N*C*H*W values in the case's layout), weight, bias, running_mean0,
 *              running_var0 (C values)
 *   forward    y, save_mean, save_invstd, and running_mean, running_var after their update
 *   backward   dx, dweight, dbias                       (y is passed in for the ReLU cases)
 *   inference  y_infer, from the updated running_mean and running_var
 * The `error` line shows a call that fails on purpose (training with one value per channel).
 * Exit status: 0, or 1 when a kernel fails unexpectedly (message on stderr).
 *
 * Inputs come from a 64-bit linear congruential generator, restarted from the same seed for
 * every case: values are generated in logical (n, c, h, w) order and stored where the layout
 * puts them, so the NCHW and NHWC cases of the same shape hold the same tensor.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cbn.h"

static const double MOMENTUM = 0.1, EPS = 1e-5;

/* ---- deterministic inputs ----------------------------------------------------------------- */

#define SEED 20240601u
static uint64_t lcg_state = SEED;

/* Uniform in [0, 1) with 53 bits (Knuth's MMIX constants; the high bits are the good ones). */
static double uniform(void)
{
    lcg_state = lcg_state * 6364136223846793005u + 1442695040888963407u;
    return (double)(lcg_state >> 11) * 0x1p-53;
}

/* Index of logical element (n, c, s) of an (N, C, S) tensor in the layout. */
static int64_t at(cbn_layout layout, int64_t n, int64_t c, int64_t s, int64_t C, int64_t S)
{
    return layout == CBN_CHANNELS_FIRST ? (n * C + c) * S + s : (n * S + s) * C + c;
}

/* ---- output ------------------------------------------------------------------------------- */

static void print_f32(FILE *f, int id, const char *name, const float *a, int64_t n)
{
    fprintf(f, "array %d %s %lld", id, name, (long long)n);
    for (int64_t i = 0; i < n; i++) fprintf(f, " %.9g", (double)a[i]);
    fputc('\n', f);
}

static void print_f64(FILE *f, int id, const char *name, const double *a, int64_t n)
{
    fprintf(f, "array %d %s %lld", id, name, (long long)n);
    for (int64_t i = 0; i < n; i++) fprintf(f, " %.17g", a[i]);
    fputc('\n', f);
}

static int check(int rc, const char *what)
{
    if (rc != CBN_OK)
        fprintf(stderr, "embed: %s failed: %s (%d)\n", what, cbn_error_string(rc), rc);
    return rc != CBN_OK;
}

/* ---- one case, written once for both element types ---------------------------------------- *
 * RUN_CASE(T, SFX) defines run_case_SFX(): allocate, fill, call the three kernels, print.      */

#define RUN_CASE(T, SFX)                                                                         \
    static int run_case_##SFX(FILE *f, int id, cbn_layout layout, int64_t N, int64_t C,         \
                              int64_t H, int64_t W, cbn_activation act)                          \
    {                                                                                            \
        const int64_t S = H * W, total = N * C * S;                                              \
        const int threads = cbn_max_threads();                                                   \
        int failed = 0;                                                                          \
        T *big = (T *)malloc(sizeof(T) * (size_t)(5 * total));                                   \
        T *small = (T *)malloc(sizeof(T) * (size_t)(11 * C));                                    \
        if (!big || !small) {                                                                    \
            free(big), free(small);                                                              \
            fprintf(stderr, "embed: out of memory\n");                                           \
            return 1;                                                                            \
        }                                                                                        \
        T *x = big, *dy = x + total, *y = dy + total, *dx = y + total, *y_infer = dx + total;    \
        T *weight = small, *bias = weight + C, *rmean0 = bias + C, *rvar0 = rmean0 + C;          \
        T *rmean = rvar0 + C, *rvar = rmean + C, *save_mean = rvar + C;                          \
        T *save_invstd = save_mean + C, *dweight = save_invstd + C, *dbias = dweight + C;        \
                                                                                                 \
        lcg_state = SEED;                                                                        \
        /* channel c is centred near c - 1 with a spread of 1 + c/2: channels differ */          \
        for (int64_t n = 0; n < N; n++)                                                          \
            for (int64_t c = 0; c < C; c++)                                                      \
                for (int64_t s = 0; s < S; s++) {                                                \
                    const double u = uniform(), v = uniform();                                   \
                    const int64_t i = at(layout, n, c, s, C, S);                                 \
                    x[i] = (T)((double)c - 1.0 + (1.0 + 0.5 * (double)c) * (2.0 * u - 1.0));     \
                    dy[i] = (T)(2.0 * v - 1.0);                                                  \
                }                                                                                \
        for (int64_t c = 0; c < C; c++) {                                                        \
            weight[c] = (T)(0.5 + uniform());                                                    \
            bias[c] = (T)(uniform() - 0.5);                                                      \
            rmean[c] = rmean0[c] = (T)(0.25 * (uniform() - 0.5));                                \
            rvar[c] = rvar0[c] = (T)(0.5 + uniform());                                           \
        }                                                                                        \
                                                                                                 \
        /* training forward: batch statistics, running statistics updated in place */           \
        failed |= check(cbn_train_forward_##SFX(x, y, N, C, S, layout, weight, bias, rmean,      \
                                                 rvar, MOMENTUM, EPS, 1, save_mean, save_invstd, \
                                                 act, threads),                                  \
                        "cbn_train_forward_" #SFX);                                              \
        /* backward: with a fused ReLU it takes the forward's output y to mask dy */            \
        failed |= check(cbn_backward_##SFX(dy, x, save_mean, save_invstd, weight,                \
                                            act == CBN_ACTIVATION_RELU ? y : NULL, act, dx,      \
                                            dweight, dbias, N, C, S, layout, threads),           \
                        "cbn_backward_" #SFX);                                                   \
        /* frozen inference with the updated running statistics */                              \
        failed |= check(cbn_infer_##SFX(x, y_infer, N, C, S, layout, rmean, rvar, weight, bias,  \
                                         EPS, act, threads),                                     \
                        "cbn_infer_" #SFX);                                                      \
                                                                                                 \
        fprintf(f, "case %d %s %s %lld %lld %lld %lld %s %.17g %.17g\n", id, #SFX,               \
                layout == CBN_CHANNELS_FIRST ? "NCHW" : "NHWC", (long long)N, (long long)C,      \
                (long long)H, (long long)W, act == CBN_ACTIVATION_RELU ? "relu" : "none",        \
                MOMENTUM, EPS);                                                                  \
        print_##SFX(f, id, "x", x, total);                                                       \
        print_##SFX(f, id, "dy", dy, total);                                                     \
        print_##SFX(f, id, "weight", weight, C);                                                 \
        print_##SFX(f, id, "bias", bias, C);                                                     \
        print_##SFX(f, id, "running_mean0", rmean0, C);                                          \
        print_##SFX(f, id, "running_var0", rvar0, C);                                            \
        print_##SFX(f, id, "y", y, total);                                                       \
        print_##SFX(f, id, "save_mean", save_mean, C);                                           \
        print_##SFX(f, id, "save_invstd", save_invstd, C);                                       \
        print_##SFX(f, id, "running_mean", rmean, C);                                            \
        print_##SFX(f, id, "running_var", rvar, C);                                              \
        print_##SFX(f, id, "dx", dx, total);                                                     \
        print_##SFX(f, id, "dweight", dweight, C);                                               \
        print_##SFX(f, id, "dbias", dbias, C);                                                   \
        print_##SFX(f, id, "y_infer", y_infer, total);                                           \
        free(big);                                                                               \
        free(small);                                                                             \
        return failed;                                                                           \
    }

RUN_CASE(float, f32)
RUN_CASE(double, f64)

/* ---- 16-bit storage: bfloat16 tensors, float parameters -------------------------------------
 * A bfloat16 is the upper half of a float32's bits: it widens by a shift, and a float with at
 * most 8 significant bits (the inputs below are multiples of 1/16 with |v| < 8) narrows by one,
 * exactly. */
static cbn_bfloat16 bf16_from_float(float v)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return (cbn_bfloat16)(u >> 16);
}

static float bf16_to_float(cbn_bfloat16 b)
{
    const uint32_t u = (uint32_t)b << 16;
    float v;
    memcpy(&v, &u, sizeof v);
    return v;
}

static void print_bf16(FILE *f, int id, const char *name, const cbn_bfloat16 *a, int64_t n)
{
    fprintf(f, "array %d %s %lld", id, name, (long long)n);
    for (int64_t i = 0; i < n; i++) fprintf(f, " %.9g", (double)bf16_to_float(a[i]));
    fputc('\n', f);
}

/* The case of RUN_CASE with bfloat16 tensors (x, dy, y, dx, y_infer) and float parameters. */
static int run_case_bf16(FILE *f, int id, cbn_layout layout, int64_t N, int64_t C, int64_t H,
                         int64_t W, cbn_activation act)
{
    const int64_t S = H * W, total = N * C * S;
    const int threads = cbn_max_threads();
    int failed = 0;
    cbn_bfloat16 *big = (cbn_bfloat16 *)malloc(sizeof(cbn_bfloat16) * (size_t)(5 * total));
    float *small = (float *)malloc(sizeof(float) * (size_t)(11 * C));
    if (!big || !small) {
        free(big), free(small);
        fprintf(stderr, "embed: out of memory\n");
        return 1;
    }
    cbn_bfloat16 *x = big, *dy = x + total, *y = dy + total, *dx = y + total,
                 *y_infer = dx + total;
    float *weight = small, *bias = weight + C, *rmean0 = bias + C, *rvar0 = rmean0 + C;
    float *rmean = rvar0 + C, *rvar = rmean + C, *save_mean = rvar + C;
    float *save_invstd = save_mean + C, *dweight = save_invstd + C, *dbias = dweight + C;

    lcg_state = SEED;
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t s = 0; s < S; s++) {
                const double u = uniform(), v = uniform();
                const int64_t i = at(layout, n, c, s, C, S);
                const double xv = (double)c - 1.0 + (1.0 + 0.5 * (double)c) * (2.0 * u - 1.0);
                x[i] = bf16_from_float((float)(((int64_t)(xv * 16.0 + 256.0) - 256) / 16.0));
                dy[i] = bf16_from_float((float)(((int64_t)(v * 32.0) - 16) / 16.0));
            }
    for (int64_t c = 0; c < C; c++) {
        weight[c] = (float)(0.5 + uniform());
        bias[c] = (float)(uniform() - 0.5);
        rmean[c] = rmean0[c] = (float)(0.25 * (uniform() - 0.5));
        rvar[c] = rvar0[c] = (float)(0.5 + uniform());
    }
    failed |= check(cbn_train_forward_bf16(x, y, N, C, S, layout, weight, bias, rmean, rvar,
                                           MOMENTUM, EPS, 1, save_mean, save_invstd, act,
                                           threads),
                    "cbn_train_forward_bf16");
    failed |= check(cbn_backward_bf16(dy, x, save_mean, save_invstd, weight,
                                      act == CBN_ACTIVATION_RELU ? y : NULL, act, dx, dweight,
                                      dbias, N, C, S, layout, threads),
                    "cbn_backward_bf16");
    failed |= check(cbn_infer_bf16(x, y_infer, N, C, S, layout, rmean, rvar, weight, bias, EPS,
                                   act, threads),
                    "cbn_infer_bf16");

    fprintf(f, "case %d bf16 %s %lld %lld %lld %lld %s %.17g %.17g\n", id,
            layout == CBN_CHANNELS_FIRST ? "NCHW" : "NHWC", (long long)N, (long long)C,
            (long long)H, (long long)W, act == CBN_ACTIVATION_RELU ? "relu" : "none", MOMENTUM,
            EPS);
    print_bf16(f, id, "x", x, total);
    print_bf16(f, id, "dy", dy, total);
    print_f32(f, id, "weight", weight, C);
    print_f32(f, id, "bias", bias, C);
    print_f32(f, id, "running_mean0", rmean0, C);
    print_f32(f, id, "running_var0", rvar0, C);
    print_bf16(f, id, "y", y, total);
    print_f32(f, id, "save_mean", save_mean, C);
    print_f32(f, id, "save_invstd", save_invstd, C);
    print_f32(f, id, "running_mean", rmean, C);
    print_f32(f, id, "running_var", rvar, C);
    print_bf16(f, id, "dx", dx, total);
    print_f32(f, id, "dweight", dweight, C);
    print_f32(f, id, "dbias", dbias, C);
    print_bf16(f, id, "y_infer", y_infer, total);
    free(big);
    free(small);
    return failed;
}

int main(int argc, char **argv)
{
    FILE *f = argc > 1 ? fopen(argv[1], "w") : stdout;
    if (!f) {
        perror(argv[1]);
        return 1;
    }
    int failed = 0;
    fprintf(f, "openmp %d %d\n", cbn_openmp_enabled(), cbn_max_threads());

    /* (N, C, H, W): a small image batch in both layouts and both types; a channels-first case
     * with H*W = 320 (long runs: the chunked path) and a channels-last one, with a fused ReLU */
    failed |= run_case_f32(f, 0, CBN_CHANNELS_FIRST, 4, 3, 5, 7, CBN_ACTIVATION_NONE);
    failed |= run_case_f32(f, 1, CBN_CHANNELS_LAST, 4, 3, 5, 7, CBN_ACTIVATION_NONE);
    failed |= run_case_f64(f, 2, CBN_CHANNELS_FIRST, 4, 3, 5, 7, CBN_ACTIVATION_NONE);
    failed |= run_case_f64(f, 3, CBN_CHANNELS_LAST, 4, 3, 5, 7, CBN_ACTIVATION_NONE);
    failed |= run_case_f64(f, 4, CBN_CHANNELS_FIRST, 2, 4, 16, 20, CBN_ACTIVATION_RELU);
    failed |= run_case_f32(f, 5, CBN_CHANNELS_LAST, 6, 40, 2, 3, CBN_ACTIVATION_RELU);
    failed |= run_case_bf16(f, 6, CBN_CHANNELS_FIRST, 4, 3, 5, 7, CBN_ACTIVATION_RELU);

    /* a call that fails on purpose: training needs at least 2 values per channel */
    float one[2] = {1.0f, 2.0f}, out[2];
    const int rc = cbn_train_forward_f32(one, out, 1, 2, 1, CBN_CHANNELS_FIRST, NULL, NULL, NULL,
                                         NULL, MOMENTUM, EPS, 1, NULL, NULL,
                                         CBN_ACTIVATION_NONE, 1);
    fprintf(f, "error %d %s\n", rc, cbn_error_string(rc));
    if (rc != CBN_ERR_TOO_FEW_VALUES) failed = 1;

    if (f != stdout && fclose(f) != 0) failed = 1;
    return failed ? 1 : 0;
}
