/*
 * cli_audit_parse.c — reads one line of the audit log (docs/audit-log.md)
 * into an au_event_t, and reads lines with a fixed buffer.
 *
 * The parser is a strict JSON subset reader for flat objects: strings,
 * integers, arrays of strings (`site`), and `modules`, an array of flat
 * objects. Unknown fields are skipped whatever their JSON type, nested at
 * most AU_SKIP_DEPTH deep. It is bounded: no allocation, no recursion past
 * that depth, every read checked against the end of the line. It is also
 * the fuzz target's subject (tests/fuzz/fuzz_audit_reader.c), so it must not
 * depend on the engine.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "cli_audit.h"

#define AU_SKIP_DEPTH 4
#define AU_KEY_MAX 32

typedef struct cursor {
    const char *p, *end;
} cursor_t;

/* Parse failures: the line is not JSON, or it ended too soon. */
typedef enum perr { P_OK = 0, P_SYNTAX, P_EOL, P_FIELD } perr_t;

/* T_UINT: an integer the writer writes unsigned (sizes, counts), so a
 * negative one is a malformed line, not a value to clamp. */
typedef enum ftype { T_INT, T_UINT, T_STR, T_HEX, T_SITE, T_MODULES } ftype_t;

typedef struct field {
    const char *key;
    ftype_t type;
    size_t off, cap; /* cap: string buffers only */
    uint32_t bit;    /* AU_F_*, 0 when nothing needs to know */
} field_t;

#define I_(k, m, b) {k, T_INT, offsetof(au_event_t, m), 0, b}
#define U_(k, m, b) {k, T_UINT, offsetof(au_event_t, m), 0, b}
#define S_(k, m, b) {k, T_STR, offsetof(au_event_t, m), sizeof(((au_event_t *)0)->m), b}

/* Every field of schema v1 the reader uses; U_ for those lib/audit.c
 * writes unsigned (budget is -1 without one). */
static const field_t fields[] = {
    I_("v", v, AU_F_V), I_("ts", ts, AU_F_TS), I_("pid", pid, AU_F_PID),
    I_("tid", tid, AU_F_TID), U_("dev", dev, AU_F_DEV), U_("size", size, AU_F_SIZE),
    U_("rc", rc, AU_F_RC), U_("used", used, AU_F_USED),
    I_("budget", budget, AU_F_BUDGET), U_("seq", seq, AU_F_SEQ),
    U_("offset", offset, 0), U_("count", count, AU_F_COUNT),
    U_("bytes", bytes, AU_F_BYTES), U_("allocs", allocs, 0), U_("frees", frees, 0),
    U_("refusals", refusals, 0), U_("bad_ptrs", bad_ptrs, 0), U_("live", live, 0),
    U_("live_bytes", live_bytes, 0),
    {"op", T_STR, 0, 0, AU_F_OP}, /* a word, mapped to au_op_t */
    S_("api", api, AU_F_API), S_("kind", kind, AU_F_KIND), S_("class", cls, AU_F_CLASS),
    S_("pattern", pattern, 0), S_("policy", policy, 0), S_("from", from, 0),
    S_("to", to, AU_F_TO), S_("budget_spec", budget_spec, 0), S_("cmd", cmd, AU_F_CMD),
    {"ptr", T_HEX, offsetof(au_event_t, ptr), 0, AU_F_PTR},
    {"site", T_SITE, 0, 0, AU_F_SITE},
    {"modules", T_MODULES, 0, 0, AU_F_MODULES},
};
#define FIELD_COUNT (sizeof fields / sizeof fields[0])

static const char *const op_words[] = {
#define AU_WORD_(name, word) word,
    AU_OPS(AU_WORD_)
#undef AU_WORD_
};
static const char *const skip_words[] = {
    "ok",
#define AU_WORD_(name, words) words,
    AU_SKIPS(AU_WORD_)
#undef AU_WORD_
};

const char *au_op_name(int op)
{
    return op >= 0 && op < AU_OP_COUNT ? op_words[op] : "?";
}

const char *au_skip_name(int why)
{
    return why >= 0 && why < AU_SKIP_COUNT ? skip_words[why] : "?";
}

/* ------------------------------------------------------------ lexing */

static void ws(cursor_t *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\r'))
        c->p++;
}

/* Consumes `ch` after blanks. */
static perr_t expect(cursor_t *c, char ch)
{
    ws(c);
    if (c->p >= c->end)
        return P_EOL;
    if (*c->p != ch)
        return P_SYNTAX;
    c->p++;
    return P_OK;
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Appends one byte to out (cap includes the NUL); drops what does not fit. */
static void put(char *out, size_t cap, size_t *n, char ch)
{
    if (out && *n + 1 < cap)
        out[(*n)++] = ch;
}

/* \uXXXX as UTF-8 (a lone surrogate becomes '?'). */
static perr_t unicode(cursor_t *c, char *out, size_t cap, size_t *n)
{
    if (c->end - c->p < 4)
        return P_EOL;
    unsigned cp = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(c->p[i]);
        if (h < 0)
            return P_SYNTAX;
        cp = cp << 4 | (unsigned)h;
    }
    c->p += 4;
    if (cp >= 0xd800 && cp <= 0xdfff)
        put(out, cap, n, '?');
    else if (cp < 0x80)
        put(out, cap, n, (char)(cp ? cp : '?')); /* no NUL inside strings */
    else if (cp < 0x800) {
        put(out, cap, n, (char)(0xc0 | cp >> 6));
        put(out, cap, n, (char)(0x80 | (cp & 0x3f)));
    } else {
        put(out, cap, n, (char)(0xe0 | cp >> 12));
        put(out, cap, n, (char)(0x80 | ((cp >> 6) & 0x3f)));
        put(out, cap, n, (char)(0x80 | (cp & 0x3f)));
    }
    return P_OK;
}

/* A JSON string into out (NUL-terminated, truncated to cap; out may be
 * NULL to skip it). */
static perr_t string(cursor_t *c, char *out, size_t cap)
{
    size_t n = 0;
    perr_t e = expect(c, '"');
    if (e)
        return e;
    for (;;) {
        if (c->p >= c->end)
            return P_EOL;
        unsigned char ch = (unsigned char)*c->p++;
        if (ch == '"')
            break;
        if (ch < 0x20)
            return P_SYNTAX;
        if (ch != '\\') {
            put(out, cap, &n, (char)ch);
            continue;
        }
        if (c->p >= c->end)
            return P_EOL;
        char esc = *c->p++;
        const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t";
        const char *hit = esc ? strchr(from, esc) : NULL;
        if (hit)
            put(out, cap, &n, to[hit - from]);
        else if (esc != 'u')
            return P_SYNTAX;
        else if ((e = unicode(c, out, cap, &n)))
            return e;
    }
    if (out && cap)
        out[n] = '\0';
    return P_OK;
}

/* A JSON integer (no fraction, no exponent) into *out. */
static perr_t integer(cursor_t *c, int64_t *out)
{
    ws(c);
    bool neg = c->p < c->end && *c->p == '-';
    c->p += neg;
    if (c->p >= c->end)
        return P_EOL;
    /* Not an integer: P_FIELD, and field_value's skip tells whether it
     * was JSON at all. */
    if (*c->p < '0' || *c->p > '9')
        return P_FIELD;
    if (*c->p == '0' && c->end - c->p > 1 && c->p[1] >= '0' && c->p[1] <= '9')
        return P_FIELD; /* leading zero */
    uint64_t v = 0, limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        unsigned d = (unsigned)(*c->p++ - '0');
        if (v > (limit - d) / 10)
            return P_FIELD;
        v = v * 10 + d;
    }
    if (c->p < c->end && (*c->p == '.' || *c->p == 'e' || *c->p == 'E'))
        return P_FIELD; /* a number, but not the integer the schema says */
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return P_OK;
}

/* "0x..." (1 to 16 hex digits) into *out. */
static perr_t hex_string(cursor_t *c, uint64_t *out)
{
    char s[24];
    perr_t e = string(c, s, sizeof s);
    if (e)
        return e;
    size_t len = strlen(s);
    if (len < 3 || len > 18 || s[0] != '0' || (s[1] != 'x' && s[1] != 'X'))
        return P_FIELD;
    uint64_t v = 0;
    for (size_t i = 2; i < len; i++) {
        int h = hexval(s[i]);
        if (h < 0)
            return P_FIELD;
        v = v << 4 | (uint64_t)h;
    }
    *out = v;
    return P_OK;
}

/* ----------------------------------------------------------- values */

static perr_t skip_value(cursor_t *c, int depth);

/* Skips "[...]" or "{...}" whose opening bracket was consumed. */
static perr_t skip_container(cursor_t *c, int depth, char close, bool keyed)
{
    ws(c);
    if (c->p < c->end && *c->p == close) {
        c->p++;
        return P_OK;
    }
    for (;;) {
        perr_t e;
        if (keyed && ((e = string(c, NULL, 0)) || (e = expect(c, ':'))))
            return e;
        if ((e = skip_value(c, depth + 1)))
            return e;
        ws(c);
        if (c->p >= c->end)
            return P_EOL;
        char ch = *c->p++;
        if (ch == close)
            return P_OK;
        if (ch != ',')
            return P_SYNTAX;
    }
}

/* Any JSON value, nested at most AU_SKIP_DEPTH deep. */
static perr_t skip_value(cursor_t *c, int depth)
{
    ws(c);
    if (c->p >= c->end)
        return P_EOL;
    if (depth > AU_SKIP_DEPTH)
        return P_SYNTAX;
    char ch = *c->p;
    if (ch == '"')
        return string(c, NULL, 0);
    if (ch == '[' || ch == '{') {
        c->p++;
        return skip_container(c, depth, ch == '[' ? ']' : '}', ch == '{');
    }
    static const char *const words[] = {"true", "false", "null"};
    for (size_t i = 0; i < 3; i++) {
        size_t n = strlen(words[i]);
        if ((size_t)(c->end - c->p) >= n && memcmp(c->p, words[i], n) == 0) {
            c->p += n;
            return P_OK;
        }
    }
    /* A number: JSON's grammar, loosely (its value is not used). */
    const char *start = c->p;
    while (c->p < c->end && *c->p && strchr("0123456789+-.eE", *c->p))
        c->p++;
    return c->p > start ? P_OK : P_SYNTAX;
}

/* "[" "0x..", ... "]": keeps the first AU_SITE_MAX frames. */
static perr_t site_array(cursor_t *c, au_event_t *ev)
{
    perr_t e = expect(c, '[');
    ev->nsite = 0;
    ws(c);
    if (e || (c->p < c->end && *c->p == ']' && c->p++))
        return e;
    for (;;) {
        uint64_t addr = 0;
        if ((e = hex_string(c, &addr)))
            return e;
        if (ev->nsite < AU_SITE_MAX)
            ev->site[ev->nsite++] = addr;
        ws(c);
        if (c->p >= c->end)
            return P_EOL;
        char ch = *c->p++;
        if (ch == ']')
            return P_OK;
        if (ch != ',')
            return P_SYNTAX;
    }
}

/* {"base":"0x..","path":"..."}: other keys are skipped. */
static perr_t module_object(cursor_t *c, au_module_t *m)
{
    perr_t e = expect(c, '{');
    bool has_base = false;
    ws(c);
    if (e || (c->p < c->end && *c->p == '}' && c->p++))
        return e ? e : P_FIELD;
    for (;;) {
        char key[AU_KEY_MAX];
        if ((e = string(c, key, sizeof key)) || (e = expect(c, ':')))
            return e;
        if (strcmp(key, "base") == 0) {
            e = hex_string(c, &m->base);
            has_base = true;
        } else if (strcmp(key, "path") == 0)
            e = string(c, m->path, sizeof m->path);
        else
            e = skip_value(c, 2);
        if (e)
            return e;
        ws(c);
        if (c->p >= c->end)
            return P_EOL;
        char ch = *c->p++;
        if (ch == '}')
            return has_base ? P_OK : P_FIELD;
        if (ch != ',')
            return P_SYNTAX;
    }
}

static perr_t modules_array(cursor_t *c, au_event_t *ev)
{
    perr_t e = expect(c, '[');
    ev->nmodule = 0;
    ws(c);
    if (e || (c->p < c->end && *c->p == ']' && c->p++))
        return e;
    for (;;) {
        au_module_t spare; /* modules past AU_MODULE_MAX land here */
        au_module_t *m = ev->nmodule < AU_MODULE_MAX ? &ev->module[ev->nmodule] : &spare;
        memset(m, 0, sizeof *m);
        if ((e = module_object(c, m)))
            return e;
        if (m != &spare)
            ev->nmodule++;
        ws(c);
        if (c->p >= c->end)
            return P_EOL;
        char ch = *c->p++;
        if (ch == ']')
            return P_OK;
        if (ch != ',')
            return P_SYNTAX;
    }
}

static const field_t *find_field(const char *key)
{
    for (size_t i = 0; i < FIELD_COUNT; i++)
        if (strcmp(fields[i].key, key) == 0)
            return &fields[i];
    return NULL;
}

static perr_t typed_value(cursor_t *c, const field_t *f, au_event_t *ev);

/* The value of a known field. P_FIELD when it is well-formed JSON but not
 * what the schema says (the cursor is then after the whole value). */
static perr_t field_value(cursor_t *c, const field_t *f, au_event_t *ev)
{
    ws(c);
    const char *start = c->p;
    perr_t e = typed_value(c, f, ev);
    if (e != P_FIELD)
        return e;
    c->p = start;
    e = skip_value(c, 1);
    return e ? e : P_FIELD;
}

static perr_t typed_value(cursor_t *c, const field_t *f, au_event_t *ev)
{
    char *base = (char *)ev;
    char op[AU_NAME_MAX];
    ws(c);
    if (c->p >= c->end)
        return P_EOL;
    bool is_str = *c->p == '"', is_arr = *c->p == '[';
    bool want_str = f->type == T_STR || f->type == T_HEX;
    bool want_arr = f->type == T_SITE || f->type == T_MODULES;
    if (want_str != is_str || want_arr != is_arr ||
        ((f->type == T_INT || f->type == T_UINT) && *c->p == '{'))
        return P_FIELD;
    switch (f->type) {
    case T_INT:
        return integer(c, (int64_t *)(base + f->off));
    case T_UINT: {
        int64_t *v = (int64_t *)(base + f->off);
        perr_t e = integer(c, v);
        return e == P_OK && *v < 0 ? P_FIELD : e;
    }
    case T_HEX:
        return hex_string(c, (uint64_t *)(base + f->off));
    case T_SITE:
        return site_array(c, ev);
    case T_MODULES:
        return modules_array(c, ev);
    case T_STR:
        break;
    }
    if (f->bit != AU_F_OP)
        return string(c, base + f->off, f->cap);
    perr_t e = string(c, op, sizeof op);
    if (e)
        return e;
    ev->op = AU_OP_COUNT;
    for (int i = 0; i < AU_OP_COUNT; i++)
        if (strcmp(op, op_words[i]) == 0)
            ev->op = (au_op_t)i;
    return P_OK;
}

/* ------------------------------------------------------------ lines */

/* The object's members; a bad value of a known field is remembered, and
 * parsing goes on so that a later syntax error still reads "not JSON". */
static perr_t members(cursor_t *c, au_event_t *ev, bool *bad_field)
{
    perr_t e = expect(c, '{');
    ws(c);
    if (e || (c->p < c->end && *c->p == '}' && c->p++))
        return e;
    for (;;) {
        char key[AU_KEY_MAX];
        if ((e = string(c, key, sizeof key)) || (e = expect(c, ':')))
            return e;
        const field_t *f = find_field(key);
        e = f ? field_value(c, f, ev) : skip_value(c, 1);
        if (e == P_FIELD)
            *bad_field = true;
        else if (e)
            return e;
        else if (f)
            ev->present |= f->bit;
        ws(c);
        if (c->p >= c->end)
            return P_EOL;
        char ch = *c->p++;
        if (ch == '}')
            return P_OK;
        if (ch != ',')
            return P_SYNTAX;
    }
}

/* The fields each operation needs beyond v, ts, pid, tid and op. */
static uint32_t needs(au_op_t op)
{
    switch (op) {
    case AU_OP_ALLOC:
        return AU_F_DEV | AU_F_PTR | AU_F_SIZE;
    case AU_OP_FREE:
        return AU_F_DEV | AU_F_PTR;
    case AU_OP_REFUSE:
        return AU_F_DEV | AU_F_SIZE;
    case AU_OP_BAD_PTR:
        return AU_F_CLASS;
    case AU_OP_PRESSURE:
        return AU_F_DEV | AU_F_TO;
    case AU_OP_LEAK:
        return AU_F_COUNT | AU_F_BYTES;
    default:
        return 0;
    }
}

au_skip_t au_parse_line(const char *line, size_t len, au_event_t *ev)
{
    cursor_t c = {line, line + len};
    bool bad_field = false;
    ev->present = 0;
    ev->op = AU_OP_COUNT;
    ev->nsite = ev->nmodule = 0;
    ev->cmd[0] = ev->api[0] = ev->kind[0] = ev->cls[0] = ev->to[0] = '\0';
    ev->pattern[0] = ev->policy[0] = ev->from[0] = ev->budget_spec[0] = '\0';
    perr_t e = members(&c, ev, &bad_field);
    ws(&c);
    if (e == P_EOL)
        return AU_SKIP_TRUNCATED;
    if (e || c.p != c.end)
        return AU_SKIP_NOT_JSON;
    if ((ev->present & AU_F_V) && ev->v != AU_VERSION)
        return AU_SKIP_VERSION;
    const uint32_t base = AU_F_V | AU_F_TS | AU_F_PID | AU_F_TID | AU_F_OP;
    if ((ev->present & AU_F_OP) && ev->op == AU_OP_COUNT)
        return AU_SKIP_OP;
    if (bad_field || (ev->present & base) != base ||
        (ev->present & needs(ev->op)) != needs(ev->op))
        return AU_SKIP_FIELD;
    if ((ev->present & AU_F_DEV) && (ev->dev < 0 || ev->dev >= AU_MAX_DEVICES))
        return AU_SKIP_FIELD;
    return AU_LINE_OK;
}

/* ----------------------------------------------------------- reading */

int au_reader_next(au_reader_t *r, size_t *len, bool *unterminated)
{
    *unterminated = false;
    if (r->at_eof)
        return 0;
    if (!fgets(r->buf, sizeof r->buf, r->f)) {
        r->at_eof = true;
        return ferror(r->f) ? -1 : 0;
    }
    r->lineno++;
    size_t n = strlen(r->buf); /* a NUL inside the line shortens it */
    if (n > 0 && r->buf[n - 1] == '\n') {
        r->buf[--n] = '\0';
        return n > AU_LINE_MAX ? -AU_SKIP_TOO_LONG : (*len = n, 1);
    }
    if (feof(r->f) || n + 1 < sizeof r->buf - 1) {
        *unterminated = true; /* the last line, or one with a NUL in it */
        *len = n;
        return 1;
    }
    int ch; /* longer than the buffer: drop the rest of it */
    while ((ch = getc(r->f)) != EOF && ch != '\n')
        ;
    if (ch == EOF && ferror(r->f))
        return -1;
    return -AU_SKIP_TOO_LONG;
}

void au_skips_add(au_skips_t *s, au_skip_t why, const char *file, long line)
{
    if (why <= AU_LINE_OK || why >= AU_SKIP_COUNT)
        return;
    if (s->total++ == 0) {
        snprintf(s->first_file, sizeof s->first_file, "%s", file);
        s->first_line = line;
    }
    s->count[why]++;
}

void au_skips_format(const au_skips_t *s, char *out, size_t len)
{
    out[0] = '\0';
    if (s->total == 0)
        return;
    size_t n = (size_t)snprintf(out, len, "skipped %ld line%s (first at %s:%ld):",
                                s->total, s->total == 1 ? "" : "s", s->first_file,
                                s->first_line);
    const char *sep = " ";
    for (int i = 1; i < AU_SKIP_COUNT && n < len; i++) {
        if (!s->count[i])
            continue;
        n += (size_t)snprintf(out + n, len - n, "%s%ld %s", sep, s->count[i],
                              au_skip_name(i));
        sep = ", ";
    }
}
