/*
 * fuzz_audit_reader.c — libFuzzer-style target for the audit-log reader
 * (tools/cli_audit_parse.c): au_parse_line on one line, and au_reader_next
 * over the input as a whole file. The shared driver's seeds are settings
 * strings, so the first byte also picks a valid schema-v1 line to splice
 * the input into (inserted, overwritten or cut at a position), which
 * reaches the parser's deeper states. Invariants, checked with abort():
 *   - the status is AU_LINE_OK or a known skip reason;
 *   - on success the op is known, counts are within their arrays, dev is in
 *     range and every string is NUL-terminated inside its buffer;
 *   - the line is read only inside [line, line+len) (each input sits in a
 *     buffer of exactly its size, so ASan sees any overread).
 * Build with -fsanitize=fuzzer (clang) or link tests/fuzz/fuzz_main.c, with
 * tools/cli_audit_parse.c.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../tools/cli_audit.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const templates[] = {
    "{\"v\":1,\"ts\":1790000000010000000,\"pid\":42,\"tid\":43,\"op\":\"alloc\",\"dev\":0,"
    "\"api\":\"cuMemAlloc_v2\",\"kind\":\"plain\",\"ptr\":\"0x7f0000000000\",\"size\":4096,"
    "\"rc\":0,\"used\":4096,\"budget\":-1,\"seq\":1,\"site\":[\"0x401234\",\"0x7f1000012345\"]}",
    "{\"v\":1,\"ts\":5,\"pid\":42,\"tid\":42,\"op\":\"exit\",\"allocs\":1,\"frees\":0,"
    "\"refusals\":0,\"bad_ptrs\":0,\"live\":1,\"live_bytes\":4096,\"modules\":[{\"base\":"
    "\"0x400000\",\"path\":\"/usr/bin/x\"},{\"base\":\"0x7f10\",\"path\":\"/l\\u00e9\\/b.so\"}]}",
    "{\"v\":1,\"ts\":5,\"pid\":42,\"tid\":42,\"op\":\"start\",\"cmd\":\"python \\\"a b\\\"\\n\","
    "\"budget_spec\":\"1GiB\",\"policy\":\"warn\",\"future\":{\"x\":[1,2.5e3,true,null]}}",
    "{\"v\":1,\"ts\":5,\"pid\":42,\"tid\":42,\"op\":\"bad_ptr\",\"api\":\"cuMemFree_v2\","
    "\"ptr\":\"0x7f8000000000\",\"class\":\"fake\",\"offset\":0,\"pattern\":\"\",\"policy\":\"warn\",\"rc\":1}",
    "{\"v\":1,\"ts\":5,\"pid\":42,\"tid\":42,\"op\":\"leak\",\"dev\":3,\"count\":2,\"bytes\":8192,\"site\":[]}",
};
#define TEMPLATE_COUNT (sizeof templates / sizeof templates[0])

static au_event_t ev; /* ~2 MiB: keep it off the stack */

static void die(const char *what, const char *line, size_t len)
{
    fprintf(stderr, "fuzz_audit_reader: invariant broken: %s; input (hex):", what);
    for (size_t i = 0; i < len; i++)
        fprintf(stderr, " %02x", (unsigned char)line[i]);
    fprintf(stderr, "\n");
    abort();
}

static bool terminated(const char *s, size_t cap) { return memchr(s, '\0', cap) != NULL; }

static void check_event(const char *line, size_t len)
{
    if (ev.op < 0 || ev.op >= AU_OP_COUNT)
        die("accepted an unknown op", line, len);
    if (ev.nsite < 0 || ev.nsite > AU_SITE_MAX || ev.nmodule < 0 || ev.nmodule > AU_MODULE_MAX)
        die("site or module count out of range", line, len);
    if ((ev.present & AU_F_DEV) && (ev.dev < 0 || ev.dev >= AU_MAX_DEVICES))
        die("device out of range", line, len);
    const char *strs[] = {ev.api, ev.kind, ev.cls, ev.pattern, ev.policy, ev.from, ev.to};
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++)
        if (!terminated(strs[i], AU_NAME_MAX))
            die("string not terminated", line, len);
    if (!terminated(ev.cmd, sizeof ev.cmd) || !terminated(ev.budget_spec, sizeof ev.budget_spec))
        die("string not terminated", line, len);
    for (int i = 0; i < ev.nmodule; i++)
        if (!terminated(ev.module[i].path, AU_PATH_MAX))
            die("module path not terminated", line, len);
}

/* Parses line[0..len) from a buffer of exactly len bytes. */
static void parse_exact(const char *line, size_t len)
{
    char *copy = malloc(len ? len : 1);
    if (!copy)
        return;
    memcpy(copy, line, len);
    au_skip_t why = au_parse_line(copy, len, &ev);
    if (why < AU_LINE_OK || why >= AU_SKIP_COUNT)
        die("unknown status", line, len);
    if (why == AU_LINE_OK)
        check_event(line, len);
    free(copy);
}

/* The input spliced into a template: byte 1 picks how, bytes 2-3 where. */
static void parse_spliced(const uint8_t *data, size_t size)
{
    const char *t = templates[data[0] % TEMPLATE_COUNT];
    size_t tlen = strlen(t), at = size > 3 ? ((size_t)data[2] << 8 | data[3]) % (tlen + 1) : 0;
    const uint8_t *rest = data + (size > 4 ? 4 : size);
    size_t rlen = size > 4 ? size - 4 : 0;
    char *buf = malloc(tlen + rlen + 1);
    if (!buf)
        return;
    size_t n = 0;
    switch (size > 1 ? data[1] % 3 : 0) {
    case 0: /* insert */
        memcpy(buf, t, at);
        memcpy(buf + at, rest, rlen);
        memcpy(buf + at + rlen, t + at, tlen - at);
        n = tlen + rlen;
        break;
    case 1: /* overwrite */
        memcpy(buf, t, tlen);
        memcpy(buf + at, rest, rlen < tlen - at ? rlen : tlen - at);
        n = tlen;
        break;
    default: /* cut */
        memcpy(buf, t, at);
        n = at;
        break;
    }
    parse_exact(buf, n);
    free(buf);
}

/* The input as a whole file, through the line reader. */
static void read_file(const uint8_t *data, size_t size)
{
    FILE *f = fmemopen((void *)data, size, "r");
    if (!f)
        return;
    au_reader_t *r = calloc(1, sizeof *r);
    if (!r) {
        fclose(f);
        return;
    }
    r->f = f;
    au_skips_t skips = {0};
    size_t len;
    bool unterminated;
    int got;
    while ((got = au_reader_next(r, &len, &unterminated)) != 0 && got != -1) {
        if (got > 0 && len > AU_LINE_MAX)
            die("line longer than the reader's limit", (const char *)data, size);
        au_skip_t why = got < 0 ? (au_skip_t)-got : au_parse_line(r->buf, len, &ev);
        au_skips_add(&skips, why, "fuzz", r->lineno);
    }
    char out[512];
    au_skips_format(&skips, out, sizeof out);
    if (!terminated(out, sizeof out))
        die("skip report not terminated", (const char *)data, size);
    free(r);
    fclose(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    parse_exact((const char *)data, size);
    if (size > 0)
        parse_spliced(data, size);
    if (size > 0)
        read_file(data, size);
    return 0;
}
