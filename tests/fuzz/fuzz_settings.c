/*
 * fuzz_settings.c — libFuzzer-style target for the settings parsers. Any
 * byte string goes to vg__size_parse, vg__budget_spec_parse and (as
 * VRAMGUARD_BUDGET, an alias, or an enum/name/path setting, chosen by the
 * first byte) to vg__settings_parse. Invariants, checked with abort() so
 * NDEBUG cannot turn them off:
 *   - success: a size is >= 1 byte; a spec's entries are well-formed and its
 *     limits never exceed the device for N%;
 *   - failure: VG_ESETTING, err is a non-empty one-line NUL-terminated text
 *     inside its buffer, and the output was not written.
 * Build with -fsanitize=fuzzer (clang) or link tests/fuzz/fuzz_main.c.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vg_settings.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define ERR_LEN 256
#define CANARY 0x5a

static void die(const char *what, const char *text)
{
    fprintf(stderr, "fuzz_settings: invariant broken: %s; input (hex):", what);
    for (size_t i = 0; text[i]; i++)
        fprintf(stderr, " %02x", (unsigned char)text[i]);
    fprintf(stderr, "\n");
    abort();
}

/* err must hold a non-empty, single-line string ending inside the buffer;
 * the canary byte after it must be untouched. */
static void check_err(const char *err, const char *text)
{
    const char *nul = memchr(err, '\0', ERR_LEN);
    if (!nul || nul == err)
        die("error text empty or not terminated", text);
    if (memchr(err, '\n', (size_t)(nul - err)))
        die("error text spans lines", text);
    if ((unsigned char)err[ERR_LEN] != CANARY)
        die("error text overran its buffer", text);
}

static void fuzz_size(const char *text)
{
    char err[ERR_LEN + 1];
    memset(err, CANARY, sizeof err);
    uint64_t bytes = 0;
    int rc = vg__size_parse(text, &bytes, err, ERR_LEN);
    if (rc == VG_OK && bytes < 1)
        die("size of 0 bytes accepted", text);
    if (rc != VG_OK && (rc != VG_ESETTING || bytes != 0))
        die("bad status or output written on failure", text);
    if (rc != VG_OK)
        check_err(err, text);
}

static void check_spec(const vg__budget_spec_t *s, const char *text)
{
    if (s->count < 0 || s->count > VG__BUDGET_ENTRIES)
        die("entry count out of range", text);
    for (int i = 0; i < s->count; i++) {
        if (s->entry[i].ordinal >= VG__MAX_DEVICES ||
            (s->entry[i].ordinal < 0) != (s->entry[i].uuid[0] != '\0'))
            die("entry is neither an ordinal nor a uuid", text);
        if (!memchr(s->entry[i].uuid, '\0', sizeof s->entry[i].uuid))
            die("uuid not terminated", text);
    }
    const uint64_t total = 80ull << 30;
    for (int dev = 0; dev < 4; dev++) {
        uint64_t lim = vg__budget_spec_limit(s, dev, NULL, total);
        const vg__budget_value_t *all = &s->all;
        if (s->count == 0 && all->unit == VG__BUDGET_PERCENT && lim > total)
            die("percent limit above the device", text);
        if (s->count == 0 && all->unit == VG__BUDGET_BYTES && lim < 1)
            die("byte limit below 1", text);
    }
}

static void fuzz_spec(const char *text)
{
    char err[ERR_LEN + 1];
    memset(err, CANARY, sizeof err);
    vg__budget_spec_t spec;
    memset(&spec, 0, sizeof spec);
    spec.count = -7;
    int rc = vg__budget_spec_parse(text, &spec, err, ERR_LEN);
    if (rc == VG_OK)
        check_spec(&spec, text);
    else if (rc != VG_ESETTING || spec.count != -7)
        die("bad status or spec written on failure", text);
    else
        check_err(err, text);
}

typedef struct one_var {
    const char *name, *value;
} one_var_t;

static const char *one_get(const char *name, void *ctx)
{
    const one_var_t *v = ctx;
    return strcmp(name, v->name) == 0 ? v->value : NULL;
}

static void fuzz_settings(uint8_t pick, const char *text)
{
    static const char *const names[] = {
        "VRAMGUARD_BUDGET",  "CUDA_DEVICE_MEMORY_LIMIT",
        "CUDA_DEVICE_MEMORY_LIMIT_5", "VRAMGUARD_SHARED",
        "VRAMGUARD_LOG",     "VRAMGUARD_AUDIT",
    };
    one_var_t var = {names[pick % (sizeof names / sizeof names[0])], text};
    static vg__settings_t s; /* ~10 KiB: keep it off the stack */
    char err[ERR_LEN + 1];
    memset(err, CANARY, sizeof err);
    int rc = vg__settings_parse(one_get, &var, &s, err, ERR_LEN);
    if (rc == VG_OK)
        check_spec(&s.budget, text);
    else if (rc != VG_ESETTING)
        die("settings: bad status", text);
    else
        check_err(err, text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0'; /* inputs with inner NULs are simply shorter */
    fuzz_size(text);
    fuzz_spec(text);
    fuzz_settings(size ? data[0] : 0, text);
    free(text);
    return 0;
}
