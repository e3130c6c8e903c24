/* amadeus' batch-1 CPU kernels (AVX-512 VNNI), called through ctypes from amadeus/native/__init__.py.
 *
 * Batch-1 generation reads every weight and every cached key/value once per token, so its speed is
 * the memory bandwidth these loops reach. PyTorch's int8 matmul and SDPA reach about a third of it at
 * one row; these two loops stream their operands in order:
 *
 *   int8_linear: y = x W^T for a few rows x, W int8 per output channel, the input quantized with its
 *     static range, exactly as amadeus.quant.modules.Int8Linear computes it (integer products are
 *     exact; see that module for the formula). W is packed in blocks of 16 output rows x 4 inputs so
 *     that one 64-byte load feeds one VPDPBUSD (16 rows x 4 products each) and the 16 sums leave in
 *     one store; the activations are unsigned (xq + 128) as VPDPBUSD needs, and 128 * rowsum(W) is
 *     subtracted back.
 *   attend_one: one query per head against L cached keys/values stored as bfloat16 (softmax(q k / sqrt
 *     D) v, the scale given), one head per task.
 *
 * Threads: OpenMP, whose runtime is the one PyTorch already loaded (the same libgomp.so.1), so the
 * caller passes torch.get_num_threads() and no second pool competes.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

/* xq = clamp(round(zx + inv_sx * x)) as PyTorch's torch.add(zx, x, alpha=inv_sx).round_().clamp_()
 * computes it (a fused multiply-add, rounding half to even); writes xq + 128 and returns sum(xq). */
static float quantize_row(const float *x, int K, float inv_sx, float zx, uint8_t *xu) {
    const __m512 a = _mm512_set1_ps(inv_sx), z = _mm512_set1_ps(zx);
    const __m512 lo = _mm512_set1_ps(-128.0f), hi = _mm512_set1_ps(127.0f);
    __m512 sum = _mm512_setzero_ps();
    for (int k = 0; k < K; k += 16) {
        __m512 t = _mm512_fmadd_ps(_mm512_loadu_ps(x + k), a, z);
        t = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        t = _mm512_min_ps(_mm512_max_ps(t, lo), hi);
        sum = _mm512_add_ps(sum, t);
        __m512i u = _mm512_add_epi32(_mm512_cvtps_epi32(t), _mm512_set1_epi32(128));
        _mm_storeu_si128((__m128i *)(xu + k), _mm512_cvtepi32_epi8(u));
    }
    /* |sum| <= 128 K < 2^24: exact in float whatever the order */
    return _mm512_reduce_add_ps(sum);
}

/* y [M, N] from x [M, K]; wp: W packed [N/16][K/4][16][4]; per output n: rowsum (of W's int8 values),
 * ss = s_x s_w, nzss = -z_w s_x s_w, bias_eff (the folded constants of Int8Linear.prepare);
 * scratch: M*K bytes. K and N are multiples of 16. */
void int8_linear(const float *x, int M, int K, int N, const int8_t *wp, const int32_t *rowsum,
                 const float *ss, const float *nzss, const float *bias_eff, float inv_sx, float zx,
                 int has_zw, float *y, uint8_t *scratch, int threads) {
    float xs[M];
    for (int m = 0; m < M; m++) xs[m] = quantize_row(x + (long)m * K, K, inv_sx, zx, scratch + (long)m * K);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int nb = 0; nb < N / 16; nb++) {
        const int8_t *block = wp + (long)nb * 16 * K;
        const int n = nb * 16;
        const __m512i correction = _mm512_slli_epi32(_mm512_loadu_si512(rowsum + n), 7);  /* 128 rowsum */
        for (int m = 0; m < M; m++) {
            const uint8_t *xu = scratch + (long)m * K;
            const int8_t *w = block;
            __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
            for (int k = 0; k < K; k += 16, w += 256) {  /* four independent sums hide VPDPBUSD's latency */
                a0 = _mm512_dpbusd_epi32(a0, _mm512_set1_epi32(*(const int32_t *)(xu + k)), _mm512_loadu_si512(w));
                a1 = _mm512_dpbusd_epi32(a1, _mm512_set1_epi32(*(const int32_t *)(xu + k + 4)), _mm512_loadu_si512(w + 64));
                a2 = _mm512_dpbusd_epi32(a2, _mm512_set1_epi32(*(const int32_t *)(xu + k + 8)), _mm512_loadu_si512(w + 128));
                a3 = _mm512_dpbusd_epi32(a3, _mm512_set1_epi32(*(const int32_t *)(xu + k + 12)), _mm512_loadu_si512(w + 192));
            }
            __m512i acc = _mm512_sub_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)),
                                           correction);
            /* y = (bias_eff + xs nzss) + acc ss, fused as PyTorch's addcmul does */
            __m512 t = _mm512_loadu_ps(bias_eff + n);
            if (has_zw) t = _mm512_fmadd_ps(_mm512_set1_ps(xs[m]), _mm512_loadu_ps(nzss + n), t);
            t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_loadu_ps(ss + n), t);
            _mm512_storeu_ps(y + (long)m * N + n, t);
        }
    }
}

static inline __m512 load_bf16(const uint16_t *p) {  /* 16 bfloat16 -> float32: the high half of each */
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

/* out [D] = softmax(scale q k^T) v for one head: q [D]; k, v bfloat16 rows of D; L keys; scores: L floats. */
static void attend_head(const float *q, const uint16_t *k, const uint16_t *v, int L, int D, float scale,
                        float *out, float *s) {
    float top = -INFINITY;
    for (int j = 0; j < L; j++) {
        __m512 acc = _mm512_setzero_ps();
        for (int d = 0; d < D; d += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), load_bf16(k + (long)j * D + d), acc);
        s[j] = _mm512_reduce_add_ps(acc) * scale;
        top = s[j] > top ? s[j] : top;
    }
    float total = 0.0f;
    for (int j = 0; j < L; j++) total += (s[j] = expf(s[j] - top));
    __m512 o[16];  /* D <= 256 */
    for (int d = 0; d < D; d += 16) o[d / 16] = _mm512_setzero_ps();
    for (int j = 0; j < L; j++) {
        const __m512 p = _mm512_set1_ps(s[j]);
        for (int d = 0; d < D; d += 16) o[d / 16] = _mm512_fmadd_ps(p, load_bf16(v + (long)j * D + d), o[d / 16]);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / total);
    for (int d = 0; d < D; d += 16) _mm512_storeu_ps(out + d, _mm512_mul_ps(o[d / 16], inv));
}

/* out [H, D] = softmax(scale q k^T) v per head; q [H, D] float32; k, v bfloat16 with head stride
 * head_stride and row stride D; L keys; scores: H*L floats of scratch. D is a multiple of 16. */
void attend_one(const float *q, const uint16_t *k, const uint16_t *v, int H, int L, int D, long head_stride,
                float scale, float *out, float *scores, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int h = 0; h < H; h++)
        attend_head(q + (long)h * D, k + h * head_stride, v + h * head_stride, L, D, scale, out + (long)h * D,
                    scores + (long)h * L);
}

/* ---- one Perceiver AR layer for one new token (amadeus.models.perceiver_ar's _step_one, batch 1) ---- */

typedef struct {  /* an int8 Linear as PackedInt8Linear holds it */
    const int8_t *wp;
    const int32_t *rowsum;
    const float *ss, *nzss, *bias_eff;
    float inv_sx, zx;
    int has_zw, n, k;
} Linear;

typedef struct {
    const float *norm_w, *norm_b;  /* before attention (the hybrid layer's q_norm) */
    Linear proj[3];                /* q, k, v; or one fused q|k|v when nproj is 1 */
    int nproj;
    Linear out;
    const float *mlp_norm_w, *mlp_norm_b;
    Linear fc1, fc2;
} Layer;

static void linear(const Linear *l, const float *x, float *y, uint8_t *scratch, int threads) {
    int8_linear(x, 1, l->k, l->n, l->wp, l->rowsum, l->ss, l->nzss, l->bias_eff, l->inv_sx, l->zx, l->has_zw, y,
                scratch, threads);
}

static void layer_norm(const float *x, int C, const float *w, const float *b, float eps, float *y) {
    double mean = 0.0, var = 0.0;
    for (int c = 0; c < C; c++) mean += x[c];
    mean /= C;
    for (int c = 0; c < C; c++) var += (x[c] - mean) * (x[c] - mean);
    const float m = (float)mean, rstd = (float)(1.0 / sqrt(var / C + eps));
    for (int c = 0; c < C; c++) y[c] = (x[c] - m) * rstd * w[c] + b[c];
}

/* [x1, x2, ...] of each head's first rot channels -> x cos + [-x2, x1, ...] sin (Rotary in the model) */
static void rotate(float *x, int H, int D, int rot, const float *cos, const float *sin) {
    for (int h = 0; h < H; h++) {
        float *xh = x + (long)h * D;
        for (int c = 0; c < rot; c += 2) {
            const float a = xh[c], b = xh[c + 1];
            xh[c] = a * cos[c] + (-b) * sin[c];
            xh[c + 1] = b * cos[c + 1] + a * sin[c + 1];
        }
    }
}

static inline uint16_t to_bf16(float f) {  /* round to nearest even, as PyTorch's float -> bfloat16 */
    uint32_t u;
    __builtin_memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* x [C] <- the layer's output for the token at row length-1 of the caches (k, v: bfloat16 [H, cap, D],
 * head stride head_stride), whose keys/values it writes there first. cos/sin: the token's rotary row,
 * or NULL when the layer does not rotate. work: 5C + wide + H*length floats. */
void layer_step(float *x, const Layer *L, int C, int H, int rot, const float *cos, const float *sin,
                uint16_t *k, uint16_t *v, long head_stride, int length, float eps, float *work, int threads) {
    const int D = C / H, wide = L->fc1.n;
    float *h = work, *qkv = h + C, *o = qkv + 3 * C, *hidden = o + C, *scores = hidden + wide;
    uint8_t *scratch = (uint8_t *)(scores + (long)H * length);  /* wide bytes after the scores */
    layer_norm(x, C, L->norm_w, L->norm_b, eps, h);
    if (L->nproj == 1) linear(&L->proj[0], h, qkv, scratch, threads);
    else for (int i = 0; i < 3; i++) linear(&L->proj[i], h, qkv + (long)i * C, scratch, threads);
    float *q = qkv, *kn = qkv + C, *vn = qkv + 2 * C;
    if (cos != NULL) {
        rotate(q, H, D, rot, cos, sin);
        rotate(kn, H, D, rot, cos, sin);
    }
    for (int hh = 0; hh < H; hh++)
        for (int d = 0; d < D; d++) {
            k[hh * head_stride + (long)(length - 1) * D + d] = to_bf16(kn[hh * D + d]);
            v[hh * head_stride + (long)(length - 1) * D + d] = to_bf16(vn[hh * D + d]);
        }
    attend_one(q, k, v, H, length, D, head_stride, 1.0f / sqrtf((float)D), o, scores, threads);
    linear(&L->out, o, h, scratch, threads);
    for (int c = 0; c < C; c++) x[c] += h[c];
    layer_norm(x, C, L->mlp_norm_w, L->mlp_norm_b, eps, h);
    linear(&L->fc1, h, hidden, scratch, threads);
    for (int j = 0; j < wide; j++) hidden[j] = 0.5f * hidden[j] * (1.0f + erff(hidden[j] * 0.70710678118654752f));
    linear(&L->fc2, hidden, h, scratch, threads);
    for (int c = 0; c < C; c++) x[c] += h[c];
}
