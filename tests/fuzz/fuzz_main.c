/*
 * fuzz_main.c — a tiny standalone driver for LLVMFuzzerTestOneInput, so CI
 * can fuzz without libFuzzer:  fuzz_main SECONDS [SEED [RUNS]]
 * Each round either mutates an input from a small seed corpus of valid and
 * invalid settings (flip, insert, delete, duplicate, splice) or makes a
 * random string from the characters the parsers care about. It stops after
 * SECONDS (0: no time limit) or RUNS inputs (0 or absent: no count limit),
 * whichever comes first, and prints "fuzz: N inputs, 0 crashes"; a crash or a broken
 * invariant aborts before that line, with the input in hex on stderr.
 * Build it together with a target, e.g. tests/fuzz/fuzz_settings.c.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_INPUT 512

static const char *const seeds[] = {
    "8GiB", "8G", "512MiB", "1.5G", "10GB", "1 GiB", "1Gi", "1.5g", "123",
    "18446744073709551615", "17179869183.999999999G", "0.000000001T", "75%",
    "12.5%", "100%", "0=8GiB,1=4GiB", "8GiB,0=4GiB,3=50%",
    "GPU-0123abcd-4567-89ab-cdef-0123456789ab=2GiB",
    "MIG-ffffffff-0000-1111-2222-333333333333=1G,7=1T", "1024m", "1048576k",
    "warn", "abort", "debug", "job-42_a.b", "/tmp/audit.log",
    /* invalid */
    "", "-1G", "8XB", "16EiB", "8GiB extra", "8G,", "18446744073709551616",
    "1.2.3G", ".G", "0x10", "0", "0.1B", "150%", "0%", "0=1G,0=2G", "8G,,1=1G",
    "64=1G", "GPU-123=1G", "=1G", "0=", "%", "1.", " 8G", "..", "a b",
};

static const char alphabet[] = "0123456789.,=%- \tkKmMgGtTiIbBxXeEpPGPU-MIG-"
                               "abcdef\n\x01\xff";

static uint64_t rng_state;

static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static size_t pick(size_t n) { return n ? (size_t)(rnd() % n) : 0; }

static size_t random_input(uint8_t *buf)
{
    size_t len = pick(64);
    for (size_t i = 0; i < len; i++)
        buf[i] = (rnd() & 7) ? (uint8_t)alphabet[pick(sizeof alphabet - 1)]
                             : (uint8_t)rnd();
    return len;
}

/* One mutation of buf[0..len) in place; returns the new length. */
static size_t mutate_once(uint8_t *buf, size_t len)
{
    size_t at = pick(len + 1);
    switch (rnd() % 5) {
    case 0: /* replace a byte */
        if (len)
            buf[pick(len)] = (uint8_t)alphabet[pick(sizeof alphabet - 1)];
        return len;
    case 1: /* insert a byte */
        if (len >= MAX_INPUT)
            return len;
        memmove(buf + at + 1, buf + at, len - at);
        buf[at] = (uint8_t)alphabet[pick(sizeof alphabet - 1)];
        return len + 1;
    case 2: /* delete a run */
        if (at < len) {
            size_t n = 1 + pick(len - at);
            memmove(buf + at, buf + at + n, len - at - n);
            return len - n;
        }
        return len;
    case 3: { /* duplicate the input onto itself (long lists, long values) */
        size_t n = len < MAX_INPUT - len ? len : MAX_INPUT - len;
        memcpy(buf + len, buf, n);
        return len + n;
    }
    default: { /* splice in a seed after a comma */
        const char *s = seeds[pick(sizeof seeds / sizeof seeds[0])];
        size_t n = strlen(s);
        if (len + 1 + n > MAX_INPUT)
            return len;
        buf[len] = ',';
        memcpy(buf + len + 1, s, n);
        return len + 1 + n;
    }
    }
}

static size_t seeded_input(uint8_t *buf)
{
    const char *s = seeds[pick(sizeof seeds / sizeof seeds[0])];
    size_t len = strlen(s);
    memcpy(buf, s, len);
    for (size_t k = pick(4); k-- > 0;)
        len = mutate_once(buf, len);
    return len;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 4) {
        fprintf(stderr, "usage: %s SECONDS [SEED [RUNS]]\n", argv[0]);
        return 2;
    }
    double seconds = atof(argv[1]);
    rng_state = argc >= 3 ? strtoull(argv[2], NULL, 0) : (uint64_t)time(NULL);
    uint64_t runs = argc == 4 ? strtoull(argv[3], NULL, 0) : 0;
    if (seconds <= 0 && runs == 0) {
        fprintf(stderr, "%s: give SECONDS or RUNS\n", argv[0]);
        return 2;
    }
    rng_state |= 1; /* xorshift must not start at 0 */
    printf("fuzz: seed %llu, %.0f s, %llu runs (0: no limit)\n", (unsigned long long)rng_state,
           seconds, (unsigned long long)runs);
    for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++)
        LLVMFuzzerTestOneInput((const uint8_t *)seeds[i], strlen(seeds[i]));
    static uint8_t buf[2 * MAX_INPUT];
    uint64_t n = sizeof seeds / sizeof seeds[0];
    time_t start = time(NULL);
    for (;; n++) {
        if (runs && n >= runs)
            break;
        if (seconds > 0 && (n & 1023) == 0 && difftime(time(NULL), start) >= seconds)
            break;
        size_t len = (rnd() % 4) ? seeded_input(buf) : random_input(buf);
        LLVMFuzzerTestOneInput(buf, len);
    }
    printf("fuzz: %llu inputs, 0 crashes\n", (unsigned long long)n);
    return 0;
}
