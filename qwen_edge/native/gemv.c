/*
 * A cblas_sgemm that sends matrix-vector products to cblas_sgemv.
 *
 * MLX's CPU backend does every float32 matmul with cblas_sgemm, including the 1-row products of
 * a decode step (x[1, K] @ W.T). OpenBLAS 0.3.21 (Debian 12) packs W into panels for such a
 * call, so each weight is read, written and read again: about 15 GB/s on a 2-core x86 machine,
 * where cblas_sgemv streams the same weights at about 27 GB/s. OpenBLAS 0.3.28 and later make
 * this switch themselves on ARM64, RISC-V and POWER (OpenBLAS pull requests 4814 and 4831), but
 * not on x86_64, where some gemv kernels had an accuracy bug at the time.
 *
 * qwen_edge/backend.py loads this library with RTLD_GLOBAL before OpenBLAS and before MLX, so
 * MLX's undefined cblas_sgemm resolves here, and then calls qwen_edge_gemv_bind() with the
 * OpenBLAS library whose sgemm and sgemv do the work. Every product that is not a single row or
 * column goes to that sgemm unchanged.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The CBLAS enumeration values (cblas.h). */
enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };

typedef void (*sgemm_fn)(int order, int trans_a, int trans_b, int m, int n, int k, float alpha,
                         const float *a, int lda, const float *b, int ldb, float beta, float *c,
                         int ldc);
typedef void (*sgemv_fn)(int order, int trans, int m, int n, float alpha, const float *a,
                         int lda, const float *x, int inc_x, float beta, float *y, int inc_y);

static sgemm_fn real_sgemm = NULL;
static sgemv_fn real_sgemv = NULL;

/* How many products went to sgemv, for tests and benchmarks. */
static unsigned long long gemv_calls = 0;

/* Use the sgemm and sgemv of the library at `path`; 0 on success, -1 if it lacks them. */
int qwen_edge_gemv_bind(const char *path) {
    void *handle = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (handle == NULL) handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) return -1;
    sgemm_fn sgemm = (sgemm_fn)dlsym(handle, "cblas_sgemm");
    sgemv_fn sgemv = (sgemv_fn)dlsym(handle, "cblas_sgemv");
    if (sgemm == NULL || sgemv == NULL) return -1;
    real_sgemm = sgemm;
    real_sgemv = sgemv;
    return 0;
}

unsigned long long qwen_edge_gemv_calls(void) { return gemv_calls; }

/* y = beta * y is not safe when beta is 0 and y contains uninitialised memory (NaN * 0 = NaN in
 * some BLAS versions), so clear y first. */
static void clear(float *y, int n, int inc) {
    if (inc == 1) {
        memset(y, 0, (size_t)n * sizeof(float));
        return;
    }
    for (int i = 0; i < n; i++) y[(size_t)i * inc] = 0.0f;
}

void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha,
                 const float *a, int lda, const float *b, int ldb, float beta, float *c,
                 int ldc) {
    if (real_sgemm == NULL) {
        /* Not bound yet: use the next cblas_sgemm in the search order. */
        real_sgemm = (sgemm_fn)dlsym(RTLD_NEXT, "cblas_sgemm");
        if (real_sgemm == NULL) {
            fputs("qwen-edge: no cblas_sgemm after native/gemv.c; set QWEN_EDGE_GEMV=off\n", stderr);
            abort();
        }
    }
    if (real_sgemv == NULL || order != ROW_MAJOR || k <= 0 || (m != 1 && n != 1)) {
        real_sgemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    gemv_calls++;

    if (m == 1) {
        /* c[1, n] = a[1, k] @ op(b)[k, n]: one row times a matrix. */
        int inc_x = trans_a == NO_TRANS ? 1 : lda;
        if (beta == 0.0f) clear(c, n, 1);
        if (trans_b == NO_TRANS) /* b is stored [k, n] */
            real_sgemv(ROW_MAJOR, TRANS, k, n, alpha, b, ldb, a, inc_x, beta, c, 1);
        else /* b is stored [n, k] */
            real_sgemv(ROW_MAJOR, NO_TRANS, n, k, alpha, b, ldb, a, inc_x, beta, c, 1);
        return;
    }

    /* c[m, 1] = op(a)[m, k] @ b[k, 1]: a matrix times one column (stride ldc in c). */
    int inc_x = trans_b == NO_TRANS ? ldb : 1;
    if (beta == 0.0f) clear(c, m, ldc);
    if (trans_a == NO_TRANS) /* a is stored [m, k] */
        real_sgemv(ROW_MAJOR, NO_TRANS, m, k, alpha, a, lda, b, inc_x, beta, c, ldc);
    else /* a is stored [k, m] */
        real_sgemv(ROW_MAJOR, TRANS, k, m, alpha, a, lda, b, inc_x, beta, c, ldc);
}
