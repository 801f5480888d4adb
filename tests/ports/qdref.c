/*
 * qdref: a reference QUIC-FL decoder and encoder written from docs/ alone.
 *
 * C99 and the standard library only. SHA-256 (FIPS 180-4), BLAKE2b (RFC 7693),
 * Philox4x64-10 (Salmon et al. 2011, Random123) and numpy's SeedSequence + PCG64 (the
 * client-private generator of the golden payloads) are written here from their specs.
 * Implements table format 1.1 (docs/table-format.md), shared randomness spec 1
 * (docs/randomness.md) and the fixed-rate payload QDQF in the envelope of wire
 * version 4 (docs/wire-format.md: the 21-byte envelope, the QUIC-FL head, layout v2 with
 * up to 64 chunks, norms rounded up to float32,
 * the exact-order butterfly transform); the sender rule and transform order follow
 * docs/porting.md. Inputs whose chunks need the power-of-two rescaling (largest |x|
 * outside [2^-60, 2^60]) are refused by the encoder here.
 *
 *   qdref verify-table DIR
 *       check the manifest's raw-bytes sha256, the receiver's sha256, the exact
 *       parameters and the fingerprint; prints "ok <fingerprint>"
 *   qdref decode DIR ROUND_SEED DIM OUT.f64 PAYLOAD...
 *       validate and aggregate payloads (weight 1 each); write the mean (DIM float64 LE)
 *   qdref decode-rotated DIR ROUND_SEED DIM OUT.f64 PAYLOAD...
 *       the same, but write the mean still in the rotated domain (rotated_dim values)
 *   qdref encode DIR ROUND_SEED CLIENT_ID RNG_SEED IN.f64 OUT.bin
 *       encode a float64 vector with numpy.random.default_rng(RNG_SEED) as the private
 *       coin flips; write the payload
 *
 * Exit status 0 on success, 1 on any refusal (message on stderr).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* bytes before the chunk norms: the 21-byte envelope and the 15-byte QUIC-FL head */
#define QDQF_HEADER 36

static void fail(const char *what, const char *detail) {
    fprintf(stderr, "qdref: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    exit(1);
}

/* ---------------------------------------------------------------- 64x64 -> 128 */
static void mul64(uint64_t a, uint64_t b, uint64_t *hi, uint64_t *lo) {
    uint64_t a0 = a & 0xffffffffu, a1 = a >> 32, b0 = b & 0xffffffffu, b1 = b >> 32;
    uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
    uint64_t mid = (p00 >> 32) + (p01 & 0xffffffffu) + (p10 & 0xffffffffu);
    *lo = (mid << 32) | (p00 & 0xffffffffu);
    *hi = p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
}

/* ---------------------------------------------------------------- SHA-256 */
static const uint32_t SHA_K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define ROTR32(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(uint32_t h[8], const unsigned char *p) {
    uint32_t w[64], a, b, c, d, e, f, g, k, t1, t2;
    int i;
    for (i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (i = 16; i < 64; i++) {
        uint32_t s0 = ROTR32(w[i - 15], 7) ^ ROTR32(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROTR32(w[i - 2], 17) ^ ROTR32(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (i = 0; i < 64; i++) {
        t1 = k + (ROTR32(e, 6) ^ ROTR32(e, 11) ^ ROTR32(e, 25)) + ((e & f) ^ (~e & g)) +
             SHA_K[i] + w[i];
        t2 = (ROTR32(a, 2) ^ ROTR32(a, 13) ^ ROTR32(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += k;
}

static void sha256(const unsigned char *data, size_t n, unsigned char out[32]) {
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    unsigned char tail[128];
    size_t full = n / 64 * 64, rest = n - full, padded, i;
    uint64_t bits = (uint64_t)n * 8;
    for (i = 0; i < full; i += 64) sha256_block(h, data + i);
    memset(tail, 0, sizeof tail);
    memcpy(tail, data + full, rest);
    tail[rest] = 0x80;
    padded = rest < 56 ? 64 : 128;
    for (i = 0; i < 8; i++) tail[padded - 1 - i] = (unsigned char)(bits >> (8 * i));
    for (i = 0; i < padded; i += 64) sha256_block(h, tail + i);
    for (i = 0; i < 32; i++) out[i] = (unsigned char)(h[i / 4] >> (24 - 8 * (i % 4)));
}

static void to_hex(const unsigned char *bytes, size_t n, char *out) {
    static const char digits[] = "0123456789abcdef";
    size_t i;
    for (i = 0; i < n; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * n] = 0;
}

/* ---------------------------------------------------------------- BLAKE2b */
static const uint64_t B2_IV[8] = {0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL,
                                  0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
                                  0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL,
                                  0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL};
static const unsigned char B2_SIGMA[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3}};

#define ROTR64(x, n) (((x) >> (n)) | ((x) << (64 - (n))))

static uint64_t load64(const unsigned char *p) {
    uint64_t v = 0;
    int i;
    for (i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static void b2_compress(uint64_t h[8], const unsigned char block[128], uint64_t count, int last) {
    uint64_t v[16], m[16];
    int i, r;
    for (i = 0; i < 16; i++) m[i] = load64(block + 8 * i);
    for (i = 0; i < 8; i++) v[i] = h[i], v[i + 8] = B2_IV[i];
    v[12] ^= count; /* messages here are far below 2^64 bytes: the high word stays 0 */
    if (last) v[14] = ~v[14];
    for (r = 0; r < 12; r++) {
        const unsigned char *s = B2_SIGMA[r];
#define B2G(a, b, c, d, x, y)                 \
    v[a] = v[a] + v[b] + (x);                 \
    v[d] = ROTR64(v[d] ^ v[a], 32);           \
    v[c] = v[c] + v[d];                       \
    v[b] = ROTR64(v[b] ^ v[c], 24);           \
    v[a] = v[a] + v[b] + (y);                 \
    v[d] = ROTR64(v[d] ^ v[a], 16);           \
    v[c] = v[c] + v[d];                       \
    v[b] = ROTR64(v[b] ^ v[c], 63);
        B2G(0, 4, 8, 12, m[s[0]], m[s[1]]);
        B2G(1, 5, 9, 13, m[s[2]], m[s[3]]);
        B2G(2, 6, 10, 14, m[s[4]], m[s[5]]);
        B2G(3, 7, 11, 15, m[s[6]], m[s[7]]);
        B2G(0, 5, 10, 15, m[s[8]], m[s[9]]);
        B2G(1, 6, 11, 12, m[s[10]], m[s[11]]);
        B2G(2, 7, 8, 13, m[s[12]], m[s[13]]);
        B2G(3, 4, 9, 14, m[s[14]], m[s[15]]);
#undef B2G
    }
    for (i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

/* Unkeyed BLAKE2b with a 16-byte personalization (zero padded), no salt. */
static void blake2b(const unsigned char *data, size_t n, size_t digest_size,
                    const char *person, unsigned char *out) {
    uint64_t h[8];
    unsigned char block[128], pers[16];
    size_t done = 0, i;
    memset(pers, 0, sizeof pers);
    memcpy(pers, person, strlen(person));
    for (i = 0; i < 8; i++) h[i] = B2_IV[i];
    h[0] ^= 0x01010000ULL ^ (uint64_t)digest_size;
    h[6] ^= load64(pers);
    h[7] ^= load64(pers + 8);
    while (n - done > 128) {
        b2_compress(h, data + done, (uint64_t)(done + 128), 0);
        done += 128;
    }
    memset(block, 0, sizeof block);
    memcpy(block, data + done, n - done);
    b2_compress(h, block, (uint64_t)n, 1);
    for (i = 0; i < digest_size; i++) out[i] = (unsigned char)(h[i / 8] >> (8 * (i % 8)));
}

/* ---------------------------------------------------------------- shared randomness */
typedef struct {
    uint64_t key[2], counter, out[4];
    int used;
} Philox;

static void philox_init(Philox *g, uint64_t round_seed, uint64_t client_id, const char *purpose) {
    unsigned char data[16 + 64], digest[16];
    size_t plen = strlen(purpose), i;
    for (i = 0; i < 8; i++) {
        data[i] = (unsigned char)(round_seed >> (8 * i));
        data[8 + i] = (unsigned char)(client_id >> (8 * i));
    }
    memcpy(data + 16, purpose, plen);
    blake2b(data, 16 + plen, 16, "quicdesign.rng1", digest);
    g->key[0] = load64(digest);
    g->key[1] = load64(digest + 8);
    g->counter = 0;
    g->used = 4;
}

/* Raw word 4i+j is word j of the block at counter i + 1 (c1 = c2 = c3 = 0 here). */
static uint64_t philox_next(Philox *g) {
    if (g->used == 4) {
        uint64_t c[4] = {++g->counter, 0, 0, 0}, k0 = g->key[0], k1 = g->key[1];
        int r;
        for (r = 0; r < 10; r++) {
            uint64_t hi0, lo0, hi1, lo1;
            if (r) k0 += 0x9E3779B97F4A7C15ULL, k1 += 0xBB67AE8584CAA73BULL;
            mul64(0xD2E7470EE14C6C93ULL, c[0], &hi0, &lo0);
            mul64(0xCA5A826395121157ULL, c[2], &hi1, &lo1);
            c[0] = hi1 ^ c[1] ^ k0;
            c[1] = lo1;
            c[2] = hi0 ^ c[3] ^ k1;
            c[3] = lo0;
        }
        memcpy(g->out, c, sizeof c);
        g->used = 0;
    }
    return g->out[g->used++];
}

static void rotation_signs(uint64_t round_seed, size_t n, double *signs) {
    Philox g;
    uint64_t word = 0;
    size_t j;
    philox_init(&g, round_seed, 0, "rotation");
    for (j = 0; j < n; j++) {
        if (j % 64 == 0) word = philox_next(&g);
        signs[j] = (word >> (j % 64)) & 1 ? -1.0 : 1.0;
    }
}

static void shared_values(uint64_t round_seed, uint64_t client_id, int bits, size_t n,
                          unsigned *h) {
    Philox g;
    uint64_t word = 0;
    size_t j;
    philox_init(&g, round_seed, client_id, "shared-h");
    for (j = 0; j < n; j++) {
        if (j % 8 == 0) word = philox_next(&g);
        h[j] = (unsigned)((word >> (8 * (j % 8))) & 0xff) & ((1u << bits) - 1);
    }
}

static uint32_t round_tag(uint64_t round_seed) {
    unsigned char data[8], digest[4];
    int i;
    for (i = 0; i < 8; i++) data[i] = (unsigned char)(round_seed >> (8 * i));
    blake2b(data, 8, 4, "quicdesign.tag1", digest);
    return (uint32_t)digest[0] | (uint32_t)digest[1] << 8 | (uint32_t)digest[2] << 16 |
           (uint32_t)digest[3] << 24;
}

/* ------------------------------------- client-private coins: SeedSequence + PCG64 */
typedef struct {
    uint64_t state_hi, state_lo, inc_hi, inc_lo;
} Pcg64;

static const uint64_t PCG_MULT_HI = 2549297995355413924ULL, PCG_MULT_LO = 4865540595714422341ULL;

static void pcg_step(Pcg64 *g) {
    uint64_t hi, lo, carry;
    mul64(g->state_lo, PCG_MULT_LO, &hi, &lo);
    hi += g->state_hi * PCG_MULT_LO + g->state_lo * PCG_MULT_HI;
    lo += g->inc_lo;
    carry = lo < g->inc_lo;
    g->state_hi = hi + g->inc_hi + carry;
    g->state_lo = lo;
}

static uint32_t ss_hashmix(uint32_t value, uint32_t *hash_const) {
    value ^= *hash_const;
    *hash_const *= 0x931e8875u;
    value *= *hash_const;
    return value ^ (value >> 16);
}

static uint32_t ss_mix(uint32_t x, uint32_t y) {
    uint32_t result = 0xca01f9ddu * x - 0x4973f715u * y;
    return result ^ (result >> 16);
}

/* numpy.random.default_rng(seed): SeedSequence(seed) -> 4 uint64 -> PCG64. */
static void pcg_seed(Pcg64 *g, uint64_t seed) {
    uint32_t entropy[2], pool[4], hash_const = 0x43b0d7e5u, state[8];
    int n_entropy = seed >> 32 ? 2 : 1, i, j;
    uint64_t words[4], initstate_hi, initstate_lo, carry;
    entropy[0] = (uint32_t)seed;
    entropy[1] = (uint32_t)(seed >> 32);
    for (i = 0; i < 4; i++) pool[i] = ss_hashmix(i < n_entropy ? entropy[i] : 0, &hash_const);
    for (i = 0; i < 4; i++)
        for (j = 0; j < 4; j++)
            if (i != j) pool[j] = ss_mix(pool[j], ss_hashmix(pool[i], &hash_const));
    hash_const = 0x8b51f9ddu;
    for (i = 0; i < 8; i++) {
        uint32_t value = pool[i % 4] ^ hash_const;
        hash_const *= 0x58f38dedu;
        value *= hash_const;
        state[i] = value ^ (value >> 16);
    }
    for (i = 0; i < 4; i++) words[i] = (uint64_t)state[2 * i] | (uint64_t)state[2 * i + 1] << 32;
    initstate_hi = words[0], initstate_lo = words[1];
    g->inc_hi = words[2] << 1 | words[3] >> 63;
    g->inc_lo = words[3] << 1 | 1;
    g->state_hi = g->state_lo = 0;
    pcg_step(g);
    g->state_lo += initstate_lo;
    carry = g->state_lo < initstate_lo;
    g->state_hi += initstate_hi + carry;
    pcg_step(g);
}

static double pcg_uniform(Pcg64 *g) {
    uint64_t x;
    unsigned rot;
    pcg_step(g);
    x = g->state_hi ^ g->state_lo;
    rot = (unsigned)(g->state_hi >> 58);
    x = rot ? (x >> rot) | (x << (64 - rot)) : x;
    return (double)(x >> 11) * (1.0 / 9007199254740992.0);
}

/* ---------------------------------------------------------------- files */
static unsigned char *read_file(const char *path, size_t limit, size_t *size) {
    FILE *f = fopen(path, "rb");
    unsigned char *data;
    long length;
    if (!f) fail("cannot open", path);
    if (fseek(f, 0, SEEK_END) != 0 || (length = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0)
        fail("cannot size", path);
    if ((size_t)length > limit) fail("file is larger than its documented bound", path);
    data = malloc((size_t)length + 1);
    if (!data || fread(data, 1, (size_t)length, f) != (size_t)length) fail("cannot read", path);
    fclose(f);
    data[length] = 0;
    *size = (size_t)length;
    return data;
}

static double load_f64(const unsigned char *p) {
    uint64_t bits = load64(p);
    double value;
    memcpy(&value, &bits, 8);
    return value;
}

static float load_f32(const unsigned char *p) {
    uint32_t bits = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                    (uint32_t)p[3] << 24;
    float value;
    memcpy(&value, &bits, 4);
    return value;
}

static uint32_t load_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void store_u32(unsigned char *p, uint32_t v) {
    int i;
    for (i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void store_f32(unsigned char *p, float value) {
    uint32_t bits;
    memcpy(&bits, &value, 4);
    store_u32(p, bits);
}

static void store_f64(unsigned char *p, double value) {
    uint64_t bits;
    int i;
    memcpy(&bits, &value, 8);
    for (i = 0; i < 8; i++) p[i] = (unsigned char)(bits >> (8 * i));
}

/* ---------------------------------------------------------------- table */
typedef struct {
    int bits, shared_bits, H, K;
    double tail_prob, lower, upper;
    double *R; /* H x K, row h */
    unsigned char fingerprint[8];
    /* sender rule */
    int E, last_open;
    int *event_h;
    double *t;              /* E + 1 breakpoints */
    unsigned char *levels;  /* (E + 1) x H: level of h after k events */
} Table;

/* The text after `"key": ` at or after `from` (the writer's layout: one space). */
static const char *after_key(const char *from, const char *key) {
    char marker[80];
    const char *at;
    sprintf(marker, "\"%s\": ", key);
    at = strstr(from, marker);
    if (!at) fail("manifest lacks key", key);
    return at + strlen(marker);
}

static void quoted(const char *at, char *out, size_t cap) {
    size_t n = 0;
    if (*at != '"') fail("manifest value is not a string", NULL);
    for (at++; *at && *at != '"'; at++)
        if (n + 1 < cap) out[n++] = *at;
    out[n] = 0;
}

/* Zero the 64 hex digits after each self-hash key (docs/table-format.md, integrity 1). */
static void zero_self_hash(unsigned char *data, size_t size, const char *key) {
    char marker[64];
    char *start, *again;
    size_t i;
    sprintf(marker, "\"%s\": \"", key);
    start = strstr((char *)data, marker);
    if (!start) return;
    again = strstr(start + 1, marker);
    if (again) fail("self-hash key occurs twice", key);
    start += strlen(marker);
    if ((size_t)(start - (char *)data) + 65 > size || start[64] != '"') fail("bad self-hash", key);
    for (i = 0; i < 64; i++) {
        if (!strchr("0123456789abcdef", start[i]) || !start[i]) fail("bad self-hash", key);
        start[i] = '0';
    }
}

static int cmp_events(const void *a, const void *b, const double *slopes) {
    int i = *(const int *)a, j = *(const int *)b;
    if (slopes[i] < slopes[j]) return -1;
    if (slopes[i] > slopes[j]) return 1;
    return (i > j) - (i < j); /* stable: h-major index order on ties */
}

static const double *g_slopes;
static int cmp_events_q(const void *a, const void *b) { return cmp_events(a, b, g_slopes); }

/* numpy's pairwise summation of a float64 vector (np.mean uses it). */
static double pairwise_sum(const double *a, size_t n, size_t stride) {
    if (n < 8) {
        double s = 0.0;
        size_t i;
        for (i = 0; i < n; i++) s += a[i * stride];
        return s;
    } else if (n <= 128) {
        double r[8], s;
        size_t i;
        for (i = 0; i < 8; i++) r[i] = a[i * stride];
        for (i = 8; i < n - n % 8; i += 8) {
            int k;
            for (k = 0; k < 8; k++) r[k] += a[(i + k) * stride];
        }
        s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) s += a[i * stride];
        return s;
    } else {
        size_t half = n / 2;
        half -= half % 8;
        return pairwise_sum(a, half, stride) + pairwise_sum(a + half * stride, n - half, stride);
    }
}

/* The sender rule of docs/porting.md section 2, built once per table. */
static void build_sender(Table *T) {
    int H = T->H, K = T->K, E = H * (K - 1), k, h, j;
    int *order = malloc(sizeof(int) * (size_t)E);
    double *slopes = malloc(sizeof(double) * (size_t)E), total = 0.0;
    for (h = 0; h < H; h++)
        for (j = 0; j < K - 1; j++) {
            slopes[h * (K - 1) + j] = T->R[h * K + j] + T->R[h * K + j + 1];
            order[h * (K - 1) + j] = h * (K - 1) + j;
        }
    g_slopes = slopes;
    qsort(order, (size_t)E, sizeof(int), cmp_events_q);
    T->E = E;
    T->event_h = malloc(sizeof(int) * (size_t)E);
    T->t = malloc(sizeof(double) * (size_t)(E + 1));
    T->levels = calloc((size_t)(E + 1) * (size_t)H, 1);
    T->t[0] = pairwise_sum(T->R, (size_t)H, (size_t)K) / H;
    for (k = 0; k < E; k++) {
        int eh = order[k] / (K - 1), ej = order[k] % (K - 1);
        T->event_h[k] = eh;
        total += (T->R[eh * K + ej + 1] - T->R[eh * K + ej]) / H;
        T->t[k + 1] = T->t[0] + total;
        memcpy(T->levels + (size_t)(k + 1) * H, T->levels + (size_t)k * H, (size_t)H);
        T->levels[(size_t)(k + 1) * H + eh] += 1;
    }
    T->last_open = 0;
    for (k = 0; k < E; k++)
        if (T->t[k + 1] > T->t[k]) T->last_open = k;
    free(order);
    free(slopes);
}

static void load_table(const char *dir, Table *T, int quiet) {
    char path[4096], value[128], recorded[128], hex[65];
    size_t size, rsize, i;
    unsigned char *raw, *scratch, digest[32], *receiver, *head;
    const char *text, *params, *exact, *arrays;
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    raw = read_file(path, 1u << 20, &size);
    text = (const char *)raw;
    if (!strstr(text, "\"name\": \"quicdesign-table\"")) fail("not a quicdesign-table", path);
    if (atoi(after_key(text, "major")) != 1) fail("unsupported major version", path);
    if (atoi(after_key(text, "minor")) < 1) fail("format 1.0: verify through index.json", path);
    /* 1. manifest self-hash over the raw bytes */
    quoted(after_key(text, "manifest_bytes_sha256"), recorded, sizeof recorded);
    scratch = malloc(size + 1);
    memcpy(scratch, raw, size + 1);
    zero_self_hash(scratch, size, "manifest_bytes_sha256");
    zero_self_hash(scratch, size, "manifest_sha256");
    sha256(scratch, size, digest);
    to_hex(digest, 32, hex);
    free(scratch);
    if (strcmp(hex, recorded) != 0) fail("manifest_bytes_sha256 mismatch", path);
    /* parameters, exact values from their float.hex() spellings */
    params = after_key(text, "parameters");
    T->bits = atoi(after_key(params, "bits"));
    T->shared_bits = atoi(after_key(params, "shared_bits"));
    if (T->bits < 1 || T->bits > 8 || T->shared_bits < 0 || T->shared_bits > 8)
        fail("bits or shared_bits outside 1..8 / 0..8", path);
    exact = after_key(params, "exact");
    quoted(after_key(exact, "lower"), value, sizeof value);
    T->lower = strtod(value, NULL);
    quoted(after_key(exact, "tail_prob"), value, sizeof value);
    T->tail_prob = strtod(value, NULL);
    quoted(after_key(exact, "upper"), value, sizeof value);
    T->upper = strtod(value, NULL);
    if (!(T->lower < T->upper) || !isfinite(T->lower) || !isfinite(T->upper))
        fail("need finite lower < upper", path);
    if (strstr(text, "\"code_model\": {")) fail("entropy-coded tables are not supported", path);
    /* 2. the receiver array */
    T->H = 1 << T->shared_bits;
    T->K = 1 << T->bits;
    arrays = after_key(text, "arrays");
    quoted(after_key(after_key(arrays, "receiver"), "sha256"), recorded, sizeof recorded);
    snprintf(path, sizeof path, "%s/receiver.f64", dir);
    receiver = read_file(path, (size_t)8 * T->H * T->K, &rsize);
    if (rsize != (size_t)8 * T->H * T->K) fail("receiver has the wrong size", path);
    sha256(receiver, rsize, digest);
    to_hex(digest, 32, hex);
    if (strcmp(hex, recorded) != 0) fail("receiver sha256 mismatch", path);
    T->R = malloc(rsize);
    for (i = 0; i < (size_t)T->H * T->K; i++) {
        T->R[i] = load_f64(receiver + 8 * i);
        if (!isfinite(T->R[i]) || (i % T->K && T->R[i] < T->R[i - 1]))
            fail("receiver rows must be finite and non-decreasing", path);
    }
    /* 3. the fingerprint */
    head = malloc(34 + rsize);
    memcpy(head, "qdtable1", 8);
    head[8] = (unsigned char)T->bits;
    head[9] = (unsigned char)T->shared_bits;
    store_f64(head + 10, T->tail_prob);
    store_f64(head + 18, T->lower);
    store_f64(head + 26, T->upper);
    memcpy(head + 34, receiver, rsize);
    sha256(head, 34 + rsize, digest);
    memcpy(T->fingerprint, digest, 8);
    to_hex(digest, 8, hex);
    quoted(after_key(text, "fingerprint"), recorded, sizeof recorded);
    if (strcmp(hex, recorded) != 0) fail("fingerprint mismatch", dir);
    free(head);
    free(receiver);
    free(raw);
    build_sender(T);
    if (T->t[0] > T->lower + 1e-9 * (T->upper - T->lower) ||
        T->t[T->E] < T->upper - 1e-9 * (T->upper - T->lower))
        fail("sender does not cover [lower, upper]", dir);
    if (!quiet) printf("ok %s\n", hex);
}

/* ---------------------------------------------------------------- layout, transform */
typedef struct {
    size_t dim, chunk, chunks, rotated;
} Layout;

static Layout layout_for(size_t d) {
    Layout L;
    size_t P = 1, m, largest, smallest;
    while (P < d) P <<= 1;
    m = P < 1024 ? P : 1024;
    largest = P / 8 > m ? P / 8 : m;
    smallest = P / 64 > m ? P / 64 : m;
    L.chunk = largest;
    /* the fewest chunks whose padding is at most d / 32 (wire format 2) */
    while (L.chunk > smallest && 32 * (L.chunk * ((d + L.chunk - 1) / L.chunk) - d) > d)
        L.chunk /= 2;
    L.dim = d;
    L.chunks = (d + L.chunk - 1) / L.chunk;
    L.rotated = L.chunk * L.chunks;
    return L;
}

/* Orthonormal Walsh-Hadamard transform, natural (Sylvester) order:
 * out[i] = sum_j (-1)^popcount(i & j) x[j] / sqrt(n). */
static void fwht(double *x, size_t n) {
    size_t h, i, j;
    double scale = 1.0 / sqrt((double)n);
    for (h = 1; h < n; h <<= 1)
        for (i = 0; i < n; i += 2 * h)
            for (j = i; j < i + h; j++) {
                double a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
    for (i = 0; i < n; i++) x[i] *= scale;
}

/* The encoder's transform (docs/wire-format.md, "Bytes independent of the CPU"): radix-4
 * passes, each reading the four quarters q0..q3 of the row and writing interleaved
 * out[4i + (0, 1, 2, 3)] = ((q0+q1) + (q2+q3), (q0-q1) + (q2-q3), (q0+q1) - (q2+q3),
 * (q0-q1) - (q2-q3)) at i; a final radix-2 pass out[2i + (0, 1)] = (h0 + h1, h0 - h1) when
 * log2(n) is odd; then one multiplication by 1/sqrt(n). */
static void exact_order_fwht(double *x, size_t n) {
    double *scratch = malloc(sizeof(double) * n), *src = x, *dst = scratch, *swap;
    size_t q = n / 4, i, log_n = 0;
    double scale = 1.0 / sqrt((double)n);
    while (((size_t)1 << log_n) < n) log_n++;
    for (i = 0; i < log_n / 2; i++) {
        size_t k;
        for (k = 0; k < q; k++) {
            double p0 = src[k] + src[q + k], p1 = src[k] - src[q + k];
            double p2 = src[2 * q + k] + src[3 * q + k], p3 = src[2 * q + k] - src[3 * q + k];
            dst[4 * k] = p0 + p2;
            dst[4 * k + 1] = p1 + p3;
            dst[4 * k + 2] = p0 - p2;
            dst[4 * k + 3] = p1 - p3;
        }
        swap = src, src = dst, dst = swap;
    }
    if (log_n % 2) {
        size_t k, half = n / 2;
        for (k = 0; k < half; k++) {
            dst[2 * k] = src[k] + src[half + k];
            dst[2 * k + 1] = src[k] - src[half + k];
        }
        swap = src, src = dst, dst = swap;
    }
    for (i = 0; i < n; i++) x[i] = src[i] * scale;
    free(scratch);
}

/* ---------------------------------------------------------------- decode */
static int decode(const Table *T, uint64_t round_seed, Layout L, uint32_t tag,
                  const unsigned char *p, size_t size, double *sum, uint32_t *client_out) {
    size_t code_bytes = (T->bits * L.rotated + 7) / 8, expected, j, k;
    uint32_t n_exact, client;
    unsigned *h;
    const unsigned char *codes, *idx, *vals;
    double norms[64];
    /* the envelope (21 bytes) and the QUIC-FL head (15 bytes): docs/wire-format.md */
    if (size < QDQF_HEADER) return fprintf(stderr, "qdref: truncated header\n"), 0;
    if (memcmp(p, "QDQF", 4) != 0 || p[4] != 4) return fprintf(stderr, "qdref: bad magic/version\n"), 0;
    if (load_u32(p + 5) != L.dim) return fprintf(stderr, "qdref: dimension\n"), 0;
    client = load_u32(p + 9);
    if (load_u32(p + 13) != tag) return fprintf(stderr, "qdref: round tag\n"), 0;
    if (load_u32(p + 17) != load_u32(T->fingerprint)) return fprintf(stderr, "qdref: config tag\n"), 0;
    if (p[21] != T->bits || p[22] != T->shared_bits || p[23] != L.chunks)
        return fprintf(stderr, "qdref: b, l or chunks do not match\n"), 0;
    if (memcmp(p + 24, T->fingerprint, 8) != 0) return fprintf(stderr, "qdref: fingerprint\n"), 0;
    n_exact = load_u32(p + 32);
    if (n_exact > L.rotated) return fprintf(stderr, "qdref: too many exact\n"), 0;
    expected = QDQF_HEADER + 4 * L.chunks + code_bytes + 8 * (size_t)n_exact;
    if (size != expected) return fprintf(stderr, "qdref: size %zu, expected %zu\n", size, expected), 0;
    for (k = 0; k < L.chunks; k++) {
        norms[k] = load_f32(p + QDQF_HEADER + 4 * k);
        if (!isfinite(norms[k]) || norms[k] < 0) return fprintf(stderr, "qdref: norm\n"), 0;
    }
    codes = p + QDQF_HEADER + 4 * L.chunks;
    if ((T->bits * L.rotated) % 8 && codes[code_bytes - 1] >> ((T->bits * L.rotated) % 8))
        return fprintf(stderr, "qdref: nonzero padding bits\n"), 0;
    idx = codes + code_bytes;
    vals = idx + 4 * (size_t)n_exact;
    for (j = 0; j < n_exact; j++) {
        if (load_u32(idx + 4 * j) >= L.rotated || (j && load_u32(idx + 4 * j) <= load_u32(idx + 4 * j - 4)))
            return fprintf(stderr, "qdref: exact indices\n"), 0;
        if (!isfinite(load_f32(vals + 4 * j))) return fprintf(stderr, "qdref: exact value\n"), 0;
    }
    h = malloc(sizeof(unsigned) * L.rotated);
    shared_values(round_seed, client, T->shared_bits, L.rotated, h);
    for (j = 0; j < L.rotated; j++) {
        size_t bit = j * T->bits;
        unsigned x = 0;
        int b;
        for (b = 0; b < T->bits; b++, bit++) x |= ((codes[bit / 8] >> (bit % 8)) & 1u) << b;
        /* the same association as the Python server: (norm * 1/sqrt(chunk)) * R */
        sum[j] += norms[j / L.chunk] * (1.0 / sqrt((double)L.chunk)) * T->R[h[j] * T->K + x];
    }
    for (j = 0; j < n_exact; j++) {
        size_t at = load_u32(idx + 4 * j);
        double scale = norms[at / L.chunk] * (1.0 / sqrt((double)L.chunk));
        sum[at] = (double)load_f32(vals + 4 * j) * scale; /* replaces the code-0 value */
    }
    free(h);
    *client_out = client;
    return 1;
}

static int cmd_decode(int argc, char **argv, int rotated_only) {
    Table T;
    uint64_t round_seed = strtoull(argv[3], NULL, 10);
    size_t dim = strtoull(argv[4], NULL, 10), j, size;
    Layout L;
    double *sum, *signs;
    uint32_t tag = round_tag(round_seed), *clients;
    unsigned char *out;
    int i, n = argc - 6;
    FILE *f;
    if (dim < 1 || dim > (1u << 26)) fail("dimension out of range", argv[4]);
    load_table(argv[2], &T, 1);
    L = layout_for(dim);
    sum = calloc(L.rotated, sizeof(double));
    signs = malloc(sizeof(double) * L.rotated);
    clients = malloc(sizeof(uint32_t) * (size_t)(n > 0 ? n : 1));
    for (i = 0; i < n; i++) {
        unsigned char *p = read_file(argv[6 + i], 64 + 8 * (size_t)L.rotated + L.rotated, &size);
        double *contribution = calloc(L.rotated, sizeof(double));
        int k;
        if (!decode(&T, round_seed, L, tag, p, size, contribution, &clients[i]))
            fail("payload refused", argv[6 + i]);
        for (k = 0; k < i; k++)
            if (clients[k] == clients[i]) fail("client added twice", argv[6 + i]);
        for (j = 0; j < L.rotated; j++) sum[j] += contribution[j];
        free(contribution);
        free(p);
    }
    if (n < 1) fail("no payload", NULL);
    /* mean in the rotated domain, then the inverse: transform, then signs, crop */
    for (j = 0; j < L.rotated; j++) sum[j] /= (double)n;
    if (rotated_only) {
        dim = L.rotated;
        for (j = 0; j < L.rotated; j++) signs[j] = 1.0;
    } else {
        for (j = 0; j < L.chunks; j++) fwht(sum + j * L.chunk, L.chunk);
        rotation_signs(round_seed, L.rotated, signs);
    }
    out = malloc(8 * dim);
    for (j = 0; j < dim; j++) store_f64(out + 8 * j, sum[j] * signs[j]);
    f = fopen(argv[5], "wb");
    if (!f || fwrite(out, 1, 8 * dim, f) != 8 * dim || fclose(f) != 0) fail("cannot write", argv[5]);
    return 0;
}

/* ---------------------------------------------------------------- encode */
static int cmd_encode(char **argv) {
    Table T;
    uint64_t round_seed = strtoull(argv[3], NULL, 10), rng_seed = strtoull(argv[5], NULL, 10);
    uint32_t client = (uint32_t)strtoul(argv[4], NULL, 10), n_exact = 0;
    size_t size, dim, j, code_bytes, total;
    unsigned char *raw = read_file(argv[6], (size_t)8 << 26, &size), *p;
    double *z, *signs, norms[64];
    float norms32[64];
    unsigned *h, *codes;
    Layout L;
    Pcg64 rng;
    FILE *f;
    load_table(argv[2], &T, 1);
    dim = size / 8;
    if (dim < 1 || size % 8) fail("input must be float64 values", argv[6]);
    L = layout_for(dim);
    z = calloc(L.rotated, sizeof(double));
    signs = malloc(sizeof(double) * L.rotated);
    rotation_signs(round_seed, L.rotated, signs);
    /* 1. rotate: signs, then the transform of each chunk */
    for (j = 0; j < dim; j++) {
        double a = fabs(load_f64(raw + 8 * j));
        if (a != 0 && (a < ldexp(1.0, -60) || a > ldexp(1.0, 60)))
            fail("values outside [2^-60, 2^60] need the rescaling qdref omits", argv[6]);
        z[j] = load_f64(raw + 8 * j) * signs[j];
    }
    for (j = 0; j < L.chunks; j++) {
        size_t i;
        double *chunk = z + j * L.chunk, *squares = malloc(sizeof(double) * L.chunk), norm;
        exact_order_fwht(chunk, L.chunk);
        for (i = 0; i < L.chunk; i++) squares[i] = chunk[i] * chunk[i];
        /* 2. the norm: numpy's pairwise sum, sqrt, rounded *up* to float32 */
        norm = sqrt(pairwise_sum(squares, L.chunk, 1));
        free(squares);
        norms32[j] = (float)norm;
        if ((double)norms32[j] < norm) norms32[j] = nextafterf(norms32[j], INFINITY);
        norms[j] = norms32[j] > 0 ? sqrt((double)L.chunk) / (double)norms32[j] : 0.0;
        for (i = 0; i < L.chunk; i++) chunk[i] *= norms[j];
    }
    /* 3. the sender rule, private coins drawn in position order */
    h = malloc(sizeof(unsigned) * L.rotated);
    codes = calloc(L.rotated, sizeof(unsigned));
    shared_values(round_seed, client, T.shared_bits, L.rotated, h);
    pcg_seed(&rng, rng_seed);
    for (j = 0; j < L.rotated; j++) {
        int lo = 0, hi = T.E + 1, k; /* k = (number of t_i <= z) - 1, clipped */
        double width, fraction;
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            if (T.t[mid] <= z[j]) lo = mid + 1; else hi = mid;
        }
        k = lo - 1 < 0 ? 0 : lo - 1;
        if (k > T.last_open) k = T.last_open;
        codes[j] = T.levels[(size_t)k * T.H + h[j]];
        if ((int)h[j] == T.event_h[k]) {
            width = T.t[k + 1] - T.t[k];
            fraction = width > 0 ? (z[j] - T.t[k]) / width : 1.0;
            fraction = fraction < 0 ? 0 : fraction > 1 ? 1 : fraction;
            codes[j] += pcg_uniform(&rng) < fraction;
        }
    }
    for (j = 0; j < L.rotated; j++) {
        int outside = T.lower == -T.upper ? fabs(z[j]) > T.upper : z[j] < T.lower || z[j] > T.upper;
        if (outside) n_exact++;
    }
    /* 4. serialize */
    code_bytes = (T.bits * L.rotated + 7) / 8;
    total = QDQF_HEADER + 4 * L.chunks + code_bytes + 8 * (size_t)n_exact;
    p = calloc(total, 1);
    memcpy(p, "QDQF", 4); /* the envelope */
    p[4] = 4;
    store_u32(p + 5, (uint32_t)dim);
    store_u32(p + 9, client);
    store_u32(p + 13, round_tag(round_seed));
    memcpy(p + 17, T.fingerprint, 4); /* config tag: the fingerprint's first 4 bytes */
    p[21] = (unsigned char)T.bits;    /* the QUIC-FL head */
    p[22] = (unsigned char)T.shared_bits;
    p[23] = (unsigned char)L.chunks;
    memcpy(p + 24, T.fingerprint, 8);
    store_u32(p + 32, n_exact);
    for (j = 0; j < L.chunks; j++) store_f32(p + QDQF_HEADER + 4 * j, norms32[j]);
    {
        unsigned char *c = p + QDQF_HEADER + 4 * L.chunks, *idx = c + code_bytes;
        unsigned char *vals = idx + 4 * (size_t)n_exact;
        size_t e = 0;
        for (j = 0; j < L.rotated; j++) {
            int outside = T.lower == -T.upper ? fabs(z[j]) > T.upper : z[j] < T.lower || z[j] > T.upper;
            size_t bit = j * T.bits;
            int b;
            unsigned x = outside ? 0 : codes[j];
            for (b = 0; b < T.bits; b++, bit++) c[bit / 8] |= (unsigned char)(((x >> b) & 1u) << (bit % 8));
            if (outside) {
                store_u32(idx + 4 * e, (uint32_t)j);
                store_f32(vals + 4 * e, (float)z[j]);
                e++;
            }
        }
    }
    f = fopen(argv[7], "wb");
    if (!f || fwrite(p, 1, total, f) != total || fclose(f) != 0) fail("cannot write", argv[7]);
    return 0;
}

int main(int argc, char **argv) {
    Table T;
    if (argc == 3 && strcmp(argv[1], "verify-table") == 0) {
        load_table(argv[2], &T, 0);
        return 0;
    }
    if (argc >= 7 && strcmp(argv[1], "decode") == 0) return cmd_decode(argc, argv, 0);
    if (argc >= 7 && strcmp(argv[1], "decode-rotated") == 0) return cmd_decode(argc, argv, 1);
    if (argc == 8 && strcmp(argv[1], "encode") == 0) return cmd_encode(argv);
    fprintf(stderr,
            "usage: qdref verify-table DIR\n"
            "       qdref decode[-rotated] DIR ROUND_SEED DIM OUT.f64 PAYLOAD...\n"
            "       qdref encode DIR ROUND_SEED CLIENT_ID RNG_SEED IN.f64 OUT.bin\n");
    return 2;
}
