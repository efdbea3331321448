/* Native float32 CPU time loops of recurrence.py (loaded by native.py; the PyTorch code there is the
 * reference and the fallback). Each function runs a whole loop over time in one call: the per-frame
 * matrix products go to the BLAS sgemm that PyTorch itself uses (its address is handed over by
 * avm_set_sgemm), and the gate arithmetic of a frame is one pass over its units. In PyTorch the same
 * frame is 10-20 separate ops on tensors of a few ten thousand elements, each paying dispatch and a
 * trip through memory. Layouts, gate orders and derivative slots are those of recurrence.py.
 *
 * Batch rows never interact inside a loop, so each loop runs as one contiguous slice of rows per OpenMP
 * thread, every thread over all frames with no synchronisation per frame (gemms with M = the slice's rows
 * on row-offset pointers, the scratch rows of its slice), MKL held to one thread inside (enter_slice). The
 * region runs on torch's own libgomp (native.py links that copy), so torch.set_num_threads sets the thread
 * count. Each row's arithmetic is the same for any split.
 */
#ifdef _OPENMP
#include <omp.h>
#else /* built without OpenMP (native.py found no libgomp of torch's to share): one thread */
static int omp_get_max_threads(void) { return 1; }
static int omp_get_thread_num(void) { return 0; }
static int omp_get_num_threads(void) { return 1; }
#endif
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef void (*sgemm_fn)(const char *transa, const char *transb, const int *m, const int *n, const int *k,
                         const float *alpha, const float *a, const int *lda, const float *b, const int *ldb,
                         const float *beta, float *c, const int *ldc);

static sgemm_fn sgemm_ptr;

void avm_set_sgemm(void *fn) { sgemm_ptr = (sgemm_fn)fn; }

typedef int (*threads_local_fn)(int);

static threads_local_fn mkl_threads_local; /* MKL_Set_Num_Threads_Local, NULL for another BLAS */

void avm_set_mkl_threads_local(void *fn) { mkl_threads_local = (threads_local_fn)fn; }

/* MKL's packed gemm (cblas_sgemm_pack_get_size, cblas_sgemm_pack, cblas_sgemm_compute), NULL for another
 * BLAS: a weight that every step multiplies is packed once per call instead of inside every sgemm (the
 * BiGRU's W_hh: its 30 forward products of 64 x 256 x 768 per thread take 6.0 ms packed, 7.1 ms not). */
typedef size_t (*pack_size_fn)(int identifier, int m, int n, int k);
typedef void (*pack_fn)(int layout, int identifier, int trans, int m, int n, int k, float alpha, const float *src,
                        int ld, float *dest);
typedef void (*packed_gemm_fn)(int layout, int transa, int transb, int m, int n, int k, const float *a, int lda,
                               const float *b, int ldb, float beta, float *c, int ldc);

static pack_size_fn pack_size_ptr;
static pack_fn pack_ptr;
static packed_gemm_fn packed_gemm_ptr;

void avm_set_sgemm_pack(void *size, void *pack, void *compute) {
    pack_size_ptr = (pack_size_fn)size, pack_ptr = (pack_fn)pack, packed_gemm_ptr = (packed_gemm_fn)compute;
}

enum { CBLAS_COL_MAJOR = 102, CBLAS_NO_TRANS = 111, CBLAS_PACKED = 151, CBLAS_A_MATRIX = 161 };

/* Fewest rows per thread: every thread runs all the gemms of a frame and reads all their weights, and below
 * about 4 rows those fixed costs outweigh the halved row work (2 cores, B = 4..16: 4 rows per thread
 * beat both one thread and 2 rows per thread). */
#define MIN_ROWS 4

/* Threads for B rows: torch's setting, at most one per MIN_ROWS rows. */
static int n_threads(int B) {
    int n = omp_get_max_threads();
    if (n > B / MIN_ROWS)
        n = B / MIN_ROWS;
    return n > 1 ? n : 1;
}

/* Inside a parallel region: the calling thread's contiguous slice [*b0, *b0 + *nb) of B rows, and MKL
 * set to one thread on it -> the previous thread-local setting, for leave_slice. torch turns MKL_DYNAMIC
 * off, so MKL would open a nested team of its own in every call where nesting is on (OMP_NESTED=true:
 * 5-30 times slower); the default nesting of libgomp alone is no guarantee. A thread running alone
 * (B < 2 MIN_ROWS) holds MKL to one thread too: a team forked and joined for every gemm of 1-7 rows made
 * the training step 2-4x slower at B = 1, 4 and 6 on 2 cores. */
static int enter_slice(int B, int *b0, int *nb) {
    const int i = omp_get_thread_num(), m = omp_get_num_threads();
    *b0 = (int)((long long)B * i / m);
    *nb = (int)((long long)B * (i + 1) / m) - *b0;
    return mkl_threads_local ? mkl_threads_local(1) : -1;
}

/* The bidirectional GRU's split: threads for B rows in two directions, an even number (half the team per
 * direction) where there are two or more. A thread then keeps one direction's W_hh in its cache, not both,
 * and even B = 1 runs on two threads. */
static int n_threads_bidir(int B) {
    int n = omp_get_max_threads();
    const int per_direction = B / MIN_ROWS > 1 ? B / MIN_ROWS : 1;
    if (n > 2 * per_direction)
        n = 2 * per_direction;
    return n >= 2 ? n & ~1 : 1;
}

/* enter_slice for that split: the calling thread's directions [*d0, *d0 + *nd) and rows [*b0, *b0 + *nb). */
static int enter_bidir_slice(int B, int *d0, int *nd, int *b0, int *nb) {
    const int i = omp_get_thread_num(), m = omp_get_num_threads();
    if (m < 2) {
        *d0 = 0, *nd = 2, *b0 = 0, *nb = B;
        return mkl_threads_local ? mkl_threads_local(1) : -1;
    }
    /* per: row slices per direction; a team smaller than asked for (possible only under OMP_DYNAMIC or a
     * thread limit) may be odd, and its last thread then has no rows */
    const int j = i / 2, per = m / 2;
    *d0 = i % 2, *nd = 1;
    *b0 = j < per ? (int)((long long)B * j / per) : 0;
    *nb = j < per ? (int)((long long)B * (j + 1) / per) - *b0 : 0;
    return mkl_threads_local ? mkl_threads_local(1) : -1;
}

/* Restores the thread's MKL setting (the pool's threads also run torch's own parallel work). */
static void leave_slice(int prev) {
    if (prev >= 0)
        mkl_threads_local(prev);
}

/* Row-major c (m, n) = a (m, k) @ b (k, n) + beta * c, with row strides lda, ldb, ldc. The Fortran
 * sgemm is column-major, where a row-major matrix reads as its transpose: c^T = b^T a^T. */
static void gemm(int m, int n, int k, const float *a, int lda, const float *b, int ldb, float beta, float *c,
                 int ldc) {
    const float one = 1.0f;
    sgemm_ptr("N", "N", &n, &m, &k, &one, b, &ldb, a, &lda, &beta, c, &ldc);
}

/* b (k, n) row-major (row stride ldb) packed for gemm_packed with m rows, in a buffer to free(); NULL where
 * MKL's packing is unavailable (the caller then uses gemm). In sgemm's column-major terms b is the left
 * operand, hence MKL's "A matrix". */
static float *pack_b(int m, int n, int k, const float *b, int ldb) {
    if (!pack_ptr || m < 1)
        return NULL;
    float *packed = malloc(pack_size_ptr(CBLAS_A_MATRIX, n, m, k));
    if (packed)
        pack_ptr(CBLAS_COL_MAJOR, CBLAS_A_MATRIX, CBLAS_NO_TRANS, n, m, k, 1.0f, b, ldb, packed);
    return packed;
}

/* gemm with b packed by pack_b (same m, n, k): c (m, n) = a (m, k) @ b + beta * c. */
static void gemm_packed(int m, int n, int k, const float *a, int lda, const float *packed, float beta, float *c,
                        int ldc) {
    packed_gemm_ptr(CBLAS_COL_MAJOR, CBLAS_PACKED, CBLAS_NO_TRANS, n, m, k, packed, n, a, lda, beta, c, ldc);
}

/* exp(x) for x in float32 range, to about 1 ulp, written so that the compiler vectorises loops over it:
 * x = n ln2 + r with |r| <= ln2 / 2, exp(r) by its Taylor series to r^7 / 7! (truncation error below
 * 0.35^8 / 8! = 6e-9, under float32 rounding), times 2^n built in the exponent bits. ln2 is split in a
 * part exact in float32 (0x3f317200) and the rest, so that n * ln2_hi has no rounding error. */
static inline float exp_f32(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x); /* keeps 2^n a normal float */
    const float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693145751953125f;
    r = r - n * 1.42860682030941723e-6f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union {
        int32_t i;
        float f;
    } scale;
    scale.i = ((int32_t)n + 127) << 23;
    return p * scale.f;
}

static inline float sigmoid_f32(float x) { return 1.0f / (1.0f + exp_f32(-x)); }

/* tanh x = 2 sigmoid(2x) - 1: absolute error ~1e-7 (relative error grows for |x| < 1e-3, where the
 * value itself is below 1e-3; the states it feeds are O(0.1-1)). */
static inline float tanh_f32(float x) { return 2.0f / (1.0f + exp_f32(-2.0f * x)) - 1.0f; }

/* ---------------------------------------------------------------------------------------------
 * Bidirectional GRU, final states (BiGRUFinal). PyTorch layouts and gate order (r, z, n):
 *   r = sig(gi_r + gh_r), z = sig(gi_z + gh_z), n = tanh(gi_n + r gh_n), h' = n + z (h - n),
 * gi = x W_ih^T + b_ih, gh = h W_hh^T + b_hh. Direction 1 reads the frames backwards.
 *   gi_f, gi_b (B, T, 3H) the input products x W_ih^T of each direction, without bias
 *   w_hh_t (2, H, 3H) the two W_hh transposed (MKL's gemm is slower here on a transposed operand at these
 *   row counts); bias (2, 4H) per direction [b_ih + b_hh for r and z, b_ih n, b_hh n]
 *   hs (2, T + 1, B, H): hs[:, 0] is the initial state (set by the caller), hs[:, s + 1] the state after
 *   step s; coef (2, T, B, 5, H) the five backward slots [c_n gh_n r (1 - r), (h - n) z (1 - z), c_n r,
 *   c_n, z] with c_n = (1 - z)(1 - n^2), or NULL; gh scratch (2, B, 3H).
 */
/* One batch row of a GRU step (see avm_bigru_forward); restrict lets the compiler vectorise over j. */
static void bigru_row(int H, const float *restrict g_in, const float *restrict g_h, const float *restrict bias,
                      const float *restrict h, float *restrict h_out, float *restrict c) {
    if (!c) {
        for (int j = 0; j < H; j++) {
            const float r = sigmoid_f32(g_in[j] + g_h[j] + bias[j]);
            const float z = sigmoid_f32(g_in[H + j] + g_h[H + j] + bias[H + j]);
            const float n = tanh_f32(g_in[2 * H + j] + bias[2 * H + j] + r * (g_h[2 * H + j] + bias[3 * H + j]));
            h_out[j] = n + z * (h[j] - n);
        }
        return;
    }
    for (int j = 0; j < H; j++) {
        const float r = sigmoid_f32(g_in[j] + g_h[j] + bias[j]);
        const float z = sigmoid_f32(g_in[H + j] + g_h[H + j] + bias[H + j]);
        const float ghn = g_h[2 * H + j] + bias[3 * H + j];
        const float n = tanh_f32(g_in[2 * H + j] + bias[2 * H + j] + r * ghn);
        const float h_minus_n = h[j] - n;
        const float c_n = (1.0f - z) * (1.0f - n * n);
        h_out[j] = n + z * h_minus_n;
        c[j] = c_n * ghn * r * (1.0f - r);
        c[H + j] = h_minus_n * z * (1.0f - z);
        c[2 * H + j] = c_n * r;
        c[3 * H + j] = c_n;
        c[4 * H + j] = z;
    }
}

/* avm_bigru_forward for directions [d0, d0 + nd) on rows [b0, b0 + nb) of B (gh: the scratch, (2, B, 3H)). */
static void bigru_forward_rows(int T, int B, int H, int d0, int nd, int b0, int nb, const float *const gi[2],
                               const float *w_hh_t, const float *bias, float *hs, float *coef, float *gh) {
    const int H3 = 3 * H;
    float *packed[2] = {NULL, NULL};
    for (int d = d0; d < d0 + nd; d++)
        packed[d] = pack_b(nb, H3, H, w_hh_t + (size_t)d * H * H3, H3);
    for (int s = 0; s < T; s++) {
        for (int d = d0; d < d0 + nd; d++) {
            float *h = hs + (((size_t)d * (T + 1) + s) * B + b0) * H, *h_next = h + (size_t)B * H;
            float *g = gh + ((size_t)d * B + b0) * H3;
            const int t_in = d ? T - 1 - s : s;
            if (packed[d])
                gemm_packed(nb, H3, H, h, H, packed[d], 0.0f, g, H3);
            else
                gemm(nb, H3, H, h, H, w_hh_t + (size_t)d * H * H3, H3, 0.0f, g, H3);
            for (int i = 0; i < nb; i++) {
                const int b = b0 + i;
                bigru_row(H, gi[d] + ((size_t)b * T + t_in) * H3, g + (size_t)i * H3, bias + (size_t)d * 4 * H,
                          h + (size_t)i * H, h_next + (size_t)i * H,
                          coef ? coef + (((size_t)d * T + s) * B + b) * 5 * H : NULL);
            }
        }
    }
    free(packed[0]);
    free(packed[1]);
}

void avm_bigru_forward(int T, int B, int H, const float *gi_f, const float *gi_b, const float *w_hh_t,
                       const float *bias, float *hs, float *coef, float *gh) {
    const float *const gi[2] = {gi_f, gi_b};
    const int n = n_threads_bidir(B);
#pragma omp parallel num_threads(n) if (n > 1) /* one thread: no team, the caller runs everything */
    {
        int d0, nd, b0, nb;
        const int prev = enter_bidir_slice(B, &d0, &nd, &b0, &nb);
        bigru_forward_rows(T, B, H, d0, nd, b0, nb, gi, w_hh_t, bias, hs, coef, gh);
        leave_slice(prev);
    }
}

/* One batch row of a backward step: dh times the slots, into d gh and d gi (both r, z, n) and dh z. */
static void bigru_row_backward(int H, const float *restrict c, float *restrict dh, float *restrict g,
                               float *restrict g_in) {
    for (int j = 0; j < H; j++) {
        const float x = dh[j];
        const float da_r = x * c[j], da_z = x * c[H + j];
        g[j] = da_r;
        g[H + j] = da_z;
        g[2 * H + j] = x * c[2 * H + j];
        g_in[j] = da_r;
        g_in[H + j] = da_z;
        g_in[2 * H + j] = x * c[3 * H + j];
        dh[j] = x * c[4 * H + j];
    }
}

/* Backward of avm_bigru_forward, from the gradient of the final states.
 *   coef as saved; w_hh_f, w_hh_b (3H, H) as in nn.GRU; dh (2, B, H) holds the gradient of the final states
 *   on entry (overwritten).
 *   dgh (2, T, B, 3H) out: d gh per step (for the weight and bias gradients);
 *   dgi_f, dgi_b (B, T, 3H) out: d gi of each direction, frames in time order.
 */
static void bigru_backward_rows(int T, int B, int H, int d0, int nd, int b0, int nb, const float *coef,
                                const float *const w_hh[2], float *dh, float *dgh, float *const dgi[2]) {
    const int H3 = 3 * H;
    for (int s = T - 1; s >= 0; s--) {
        for (int d = d0; d < d0 + nd; d++) {
            float *dh_d = dh + ((size_t)d * B + b0) * H;
            float *g = dgh + (((size_t)d * T + s) * B + b0) * H3;
            const int t_in = d ? T - 1 - s : s;
            for (int i = 0; i < nb; i++) {
                const int b = b0 + i;
                bigru_row_backward(H, coef + (((size_t)d * T + s) * B + b) * 5 * H, dh_d + (size_t)i * H,
                                   g + (size_t)i * H3, dgi[d] + ((size_t)b * T + t_in) * H3);
            }
            if (s) /* dh_{s-1} = dh z + d gh @ W_hh */
                gemm(nb, H, H3, g, H3, w_hh[d], H, 1.0f, dh_d, H);
        }
    }
}

void avm_bigru_backward(int T, int B, int H, const float *coef, const float *w_hh_f, const float *w_hh_b,
                        float *dh, float *dgh, float *dgi_f, float *dgi_b) {
    const float *const w_hh[2] = {w_hh_f, w_hh_b};
    float *const dgi[2] = {dgi_f, dgi_b};
    const int n = n_threads_bidir(B);
#pragma omp parallel num_threads(n) if (n > 1) /* one thread: no team, the caller runs everything */
    {
        int d0, nd, b0, nb;
        const int prev = enter_bidir_slice(B, &d0, &nd, &b0, &nb);
        bigru_backward_rows(T, B, H, d0, nd, b0, nb, coef, w_hh, dh, dgh, dgi);
        leave_slice(prev);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Dynamical chains (ChainsLoop); notation in the docstring of recurrence.py. C chains, chain 0 the root,
 * K = C - 1 children, F = H + Zm + 1, E = H + Zm.
 *   a (C, T, B, P) posterior fc1 feature/w part incl. bias; eps (C, T, B, Zm) noise (zero padded)
 *   hz (C, T + 1, B, F) = [h, z, 1]: hz[:, 0], the constant column and the root's padded z columns are
 *     set by the caller; the loop writes h and z of frames 1..T
 *   w_big (C, F, 4H), columns [gh_n | r, u | gi_n]; w_ph (C, H, P); w_pz_k (K, Z0, P)
 *   w_root_s (P, 2 Z0), b_root_s (2 Z0), w_kid_s (K, P, 2 Zm), b_kid_s (K, 2 Zm): output layers with
 *     the logvar halves pre-scaled by 1/2, so that exp of that output is the std
 *   out: ru (C, T, B, 2H) = [r, u]; act (C, T, B, P) = tanh(pre); std (C, T, B, Zm) (root: its first Z0
 *     columns); o_root (T, B, 2 Z0), o_kid (K, T, B, 2 Zm) = [mean | logvar];
 *     k4 (C, T, B, 4, H) = [kn r, kn r gh_n (1 - r), (h - n) u (1 - u), kn] with kn = (1 - u)(1 - n^2)
 *     (the factors of d G = dh k4 in the column blocks of G) and dact (C, T, B, P) = 1 - act^2, or NULL
 *   g scratch (B, 4H): G of one chain and frame; n and G are not stored (the backward reads k4).
 */
/* One batch row of a chain's GRU step: G row -> r, u, h_t and (k != NULL) the four k4 slots. */
static void chains_gru_row(int H, const float *restrict g, const float *restrict h, float *restrict h_out,
                           float *restrict ru, float *restrict k) {
    if (!k) {
        for (int j = 0; j < H; j++) {
            const float r = sigmoid_f32(g[H + j]), u = sigmoid_f32(g[2 * H + j]);
            const float n = tanh_f32(g[3 * H + j] + r * g[j]);
            ru[j] = r;
            ru[H + j] = u;
            h_out[j] = n + u * (h[j] - n);
        }
        return;
    }
    for (int j = 0; j < H; j++) {
        const float r = sigmoid_f32(g[H + j]), u = sigmoid_f32(g[2 * H + j]);
        const float n = tanh_f32(g[3 * H + j] + r * g[j]);
        const float h_minus_n = h[j] - n, one_minus_u = 1.0f - u;
        const float kn = (1.0f - n * n) * one_minus_u, kg = kn * r, kr = kg * g[j];
        ru[j] = r;
        ru[H + j] = u;
        h_out[j] = n + u * h_minus_n;
        k[j] = kg;
        k[H + j] = kr - kr * r;
        k[2 * H + j] = h_minus_n * u * one_minus_u;
        k[3 * H + j] = kn;
    }
}

/* act = tanh(pre) in place over m contiguous values, and its derivative when d != NULL. */
static void chains_tanh(int m, float *restrict x, float *restrict d) {
    if (!d) {
        for (int i = 0; i < m; i++)
            x[i] = tanh_f32(x[i]);
        return;
    }
    for (int i = 0; i < m; i++) {
        const float y = tanh_f32(x[i]);
        x[i] = y;
        d[i] = 1.0f - y * y;
    }
}

/* One batch row of a Gaussian head: o (2Z) = [mean, logvar / 2] without bias on entry -> the output
 * [mean, logvar], std = exp(logvar / 2) and the sample z = mean + std eps. */
static void chains_head_row(int Z, const float *restrict bias, const float *restrict eps, float *restrict o,
                            float *restrict std, float *restrict z) {
    for (int j = 0; j < Z; j++) {
        const float mean = o[j] + bias[j], half_lv = o[Z + j] + bias[Z + j], s = exp_f32(half_lv);
        o[j] = mean;
        o[Z + j] = 2.0f * half_lv;
        std[j] = s;
        z[j] = mean + s * eps[j];
    }
}

/* One chain's posterior head at one frame: pre (in act) -> tanh, output layer, std and z per row. */
static void chains_head(int B, int P, int Z, int Zm, int F, float *act, float *dact, const float *w_s,
                        const float *b_s, const float *eps, float *o, float *std, float *z) {
    chains_tanh(B * P, act, dact);
    gemm(B, 2 * Z, P, act, P, w_s, 2 * Z, 0.0f, o, 2 * Z);
    for (int b = 0; b < B; b++)
        chains_head_row(Z, b_s, eps + (size_t)b * Zm, o + (size_t)b * 2 * Z, std + (size_t)b * Zm,
                        z + (size_t)b * F);
}

/* avm_chains_forward on rows [b0, b0 + nb) of B (g: the slice's own rows of the scratch). */
static void chains_forward_rows(int C, int T, int B, int H, int P, int Zm, int Z0, int b0, int nb, const float *a,
                                const float *eps, float *hz, const float *w_big, const float *w_ph,
                                const float *w_root_s, const float *b_root_s, const float *w_kid_s,
                                const float *b_kid_s, const float *w_pz_k, float *ru, float *act, float *std,
                                float *o_root, float *o_kid, float *k4, float *dact, float *g) {
    const int F = H + Zm + 1, H4 = 4 * H;
    const size_t BP = (size_t)B * P, pb = (size_t)b0 * P; /* pb: the slice's offset in a (B, P) block */
    g += (size_t)b0 * H4;
    for (int t = 0; t < T; t++) {
        for (int c = 0; c < C; c++) {
            const size_t ct = (size_t)c * T + t;
            const float *wb = w_big + (size_t)c * F * H4;
            float *hz_prev = hz + (((size_t)c * (T + 1) + t) * B + b0) * F, *hz_next = hz_prev + (size_t)B * F;
            float *pre = act + ct * BP + pb;
            /* G = hz_prev @ w_big without the zero blocks (a quarter of w_big): [z, 1] times rows H: into
             * all columns (the last row is the biases of every block), then h times rows :H into :3H */
            gemm(nb, H4, Zm + 1, hz_prev + H, F, wb + (size_t)H * H4, H4, 0.0f, g, H4);
            gemm(nb, 3 * H, H, hz_prev, F, wb, H4, 1.0f, g, H4);
            for (int i = 0; i < nb; i++) {
                const size_t row = ct * B + b0 + i;
                chains_gru_row(H, g + (size_t)i * H4, hz_prev + (size_t)i * F, hz_next + (size_t)i * F,
                               ru + row * 2 * H, k4 ? k4 + row * H4 : NULL);
            }
            /* pre = a + h_t @ w_ph, formed in the act buffer */
            memcpy(pre, a + ct * BP + pb, (size_t)nb * P * sizeof(float));
            gemm(nb, P, H, hz_next, F, w_ph + (size_t)c * H * P, P, 1.0f, pre, P);
        }
        const size_t tb = (size_t)t * B + b0;
        float *z0 = hz + (tb + B) * F + H; /* chain 0, frame t + 1 */
        chains_head(nb, P, Z0, Zm, F, act + (size_t)t * BP + pb, dact ? dact + (size_t)t * BP + pb : NULL, w_root_s,
                    b_root_s, eps + tb * Zm, o_root + tb * 2 * Z0, std + tb * Zm, z0);
        for (int k = 0; k < C - 1; k++) {
            const size_t ct = (size_t)(k + 1) * T + t, ctb = ct * B + b0;
            gemm(nb, P, Z0, z0, F, w_pz_k + (size_t)k * Z0 * P, P, 1.0f, act + ct * BP + pb, P);
            chains_head(nb, P, Zm, Zm, F, act + ct * BP + pb, dact ? dact + ct * BP + pb : NULL,
                        w_kid_s + (size_t)k * P * 2 * Zm, b_kid_s + (size_t)k * 2 * Zm, eps + ctb * Zm,
                        o_kid + (((size_t)k * T + t) * B + b0) * 2 * Zm, std + ctb * Zm,
                        hz + (((size_t)(k + 1) * (T + 1) + t + 1) * B + b0) * F + H);
        }
    }
}

void avm_chains_forward(int C, int T, int B, int H, int P, int Zm, int Z0, const float *a, const float *eps,
                        float *hz, const float *w_big, const float *w_ph, const float *w_root_s,
                        const float *b_root_s, const float *w_kid_s, const float *b_kid_s, const float *w_pz_k,
                        float *ru, float *act, float *std, float *o_root, float *o_kid, float *k4, float *dact,
                        float *g) {
    const int n = n_threads(B);
#pragma omp parallel num_threads(n) if (n > 1) /* one thread: no team, the caller runs all rows */
    {
        int b0, nb;
        const int prev = enter_slice(B, &b0, &nb);
        chains_forward_rows(C, T, B, H, P, Zm, Z0, b0, nb, a, eps, hz, w_big, w_ph, w_root_s, b_root_s, w_kid_s,
                            b_kid_s, w_pz_k, ru, act, std, o_root, o_kid, k4, dact, g);
        leave_slice(prev);
    }
}

/* One batch row of d o = d o_out + dz [1, std eps / 2] (mean, logvar halves), Z wide. */
static void chains_dout_row(int Z, const float *restrict d_out, const float *restrict dz, const float *restrict std,
                            const float *restrict eps, float *restrict d_o) {
    for (int j = 0; j < Z; j++) {
        d_o[j] = d_out[j] + dz[j];
        d_o[Z + j] = d_out[Z + j] + dz[j] * (std[j] * eps[j] * 0.5f);
    }
}

/* x *= y over n values (rows of dpre times tanh'). */
static void chains_mul(int n, float *restrict x, const float *restrict y) {
    for (int i = 0; i < n; i++)
        x[i] *= y[i];
}

/* dh = dh_in + dh u (u of the next frame; first == 1: dh = dh_in). */
static void chains_dh_in(int H, const float *restrict dh_in, const float *restrict u, float *restrict dh, int first) {
    if (first) {
        for (int j = 0; j < H; j++)
            dh[j] = dh_in[j];
        return;
    }
    for (int j = 0; j < H; j++)
        dh[j] = dh_in[j] + dh[j] * u[j];
}

/* d G row = dh times the four k4 slots. */
static void chains_dg_row(int H, const float *restrict dh, const float *restrict k, float *restrict dg) {
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < H; j++)
            dg[i * H + j] = dh[j] * k[i * H + j];
}

/* Backward of avm_chains_forward (same notation), the loop of ChainsLoop.backward.
 *   k4, ru, dact, std, eps as saved by the forward; w_big_t (C, 4H, E) = w_big[:, :-1] transposed;
 *   w_ph_t (C, P, H); w_root (2 Z0, P); w_kid_t (K, 2 Zm, P); w_pz_t (K P, Z0); d_root (T, B, 2 Z0) and
 *   d_kid (K, T, B, 2 Zm) the gradients of the outputs
 *   dhz (C, T, B, E): [d hs, d zs] on entry, plus the parts from G_{t+1} and (root z) the children
 *   out: dg (C, T, B, 4H) d G; dpre (T, B, C, P) d pre; d_o0 (T, B, 2 Z0), d_ok (K, T, B, 2 Zm) d of the
 *     output layers' outputs; dh (C, B, H) the full gradient of h_1, the state after frame 0 (the caller
 *     adds dh u_0 to that of h_0)
 */
static void chains_backward_rows(int C, int T, int B, int H, int P, int Zm, int Z0, int b0, int nb,
                                 const float *k4, const float *ru, const float *dact, const float *std,
                                 const float *eps, const float *w_big_t, const float *w_ph_t, const float *w_root,
                                 const float *w_kid_t, const float *w_pz_t, const float *d_root, const float *d_kid,
                                 float *dhz, float *dg, float *dpre, float *d_o0, float *d_ok, float *dh) {
    const int E = H + Zm, H4 = 4 * H, K = C - 1, CP = C * P;
    const size_t BP = (size_t)B * P;
    for (int t = T - 1; t >= 0; t--) {
        const size_t tb = (size_t)t * B + b0; /* the slice's first row in (T, B, ..) layouts */
        float *dpre_t = dpre + tb * CP;
        for (int c = 0; c < C && t < T - 1; c++) {
            /* dhz_t += d G_{t+1} @ w_big^T without its zero blocks: dh from columns :3H of d G and rows :3H
             * of w_big_t (state weights), dz from columns H: and rows H: (input weights) */
            const float *dg_next = dg + (((size_t)c * T + t + 1) * B + b0) * H4, *wt = w_big_t + (size_t)c * H4 * E;
            float *dhz_t = dhz + (((size_t)c * T + t) * B + b0) * E;
            gemm(nb, H, 3 * H, dg_next, H4, wt, E, 1.0f, dhz_t, E);
            gemm(nb, Zm, 3 * H, dg_next + H, H4, wt + (size_t)H * E + H, E, 1.0f, dhz_t + H, E);
        }
        for (int k = 0; k < K; k++) {
            const size_t ct = (size_t)(k + 1) * T + t, kt = (size_t)k * T + t;
            float *dok = d_ok + (kt * B + b0) * 2 * Zm;
            for (int i = 0; i < nb; i++) {
                const size_t row = ct * B + b0 + i;
                chains_dout_row(Zm, d_kid + (kt * B + b0 + i) * 2 * Zm, dhz + row * E + H, std + row * Zm,
                                eps + row * Zm, dok + (size_t)i * 2 * Zm);
            }
            gemm(nb, P, 2 * Zm, dok, 2 * Zm, w_kid_t + (size_t)k * 2 * Zm * P, P, 0.0f, dpre_t + (size_t)(k + 1) * P,
                 CP);
            for (int i = 0; i < nb; i++)
                chains_mul(P, dpre_t + (size_t)i * CP + (size_t)(k + 1) * P, dact + ct * BP + (size_t)(b0 + i) * P);
        }
        if (K) /* the root's dz gets the children's fc1 part: (B, K P) @ w_pz^T */
            gemm(nb, Z0, K * P, dpre_t + P, CP, w_pz_t, Z0, 1.0f, dhz + tb * E + H, E);
        for (int i = 0; i < nb; i++) {
            const size_t row = tb + i;
            chains_dout_row(Z0, d_root + row * 2 * Z0, dhz + row * E + H, std + row * Zm, eps + row * Zm,
                            d_o0 + row * 2 * Z0);
        }
        gemm(nb, P, 2 * Z0, d_o0 + tb * 2 * Z0, 2 * Z0, w_root, P, 0.0f, dpre_t, CP);
        for (int i = 0; i < nb; i++)
            chains_mul(P, dpre_t + (size_t)i * CP, dact + (size_t)t * BP + (size_t)(b0 + i) * P);
        for (int c = 0; c < C; c++) {
            const size_t ct = (size_t)c * T + t;
            float *dh_c = dh + ((size_t)c * B + b0) * H;
            for (int i = 0; i < nb; i++) {
                const size_t row = ct * B + b0 + i;
                chains_dh_in(H, dhz + row * E, t < T - 1 ? ru + (row + B) * 2 * H + H : NULL, dh_c + (size_t)i * H,
                             t == T - 1);
            }
            gemm(nb, H, P, dpre_t + (size_t)c * P, CP, w_ph_t + (size_t)c * P * H, H, 1.0f, dh_c, H);
            for (int i = 0; i < nb; i++) {
                const size_t row = ct * B + b0 + i;
                chains_dg_row(H, dh_c + (size_t)i * H, k4 + row * H4, dg + row * H4);
            }
        }
    }
}

void avm_chains_backward(int C, int T, int B, int H, int P, int Zm, int Z0, const float *k4, const float *ru,
                         const float *dact, const float *std, const float *eps, const float *w_big_t,
                         const float *w_ph_t, const float *w_root, const float *w_kid_t, const float *w_pz_t,
                         const float *d_root, const float *d_kid, float *dhz, float *dg, float *dpre, float *d_o0,
                         float *d_ok, float *dh) {
    const int n = n_threads(B);
#pragma omp parallel num_threads(n) if (n > 1) /* one thread: no team, the caller runs all rows */
    {
        int b0, nb;
        const int prev = enter_slice(B, &b0, &nb);
        chains_backward_rows(C, T, B, H, P, Zm, Z0, b0, nb, k4, ru, dact, std, eps, w_big_t, w_ph_t, w_root,
                             w_kid_t, w_pz_t, d_root, d_kid, dhz, dg, dpre, d_o0, d_ok, dh);
        leave_slice(prev);
    }
}
