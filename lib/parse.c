/*
 * parse.c — the pure value parsers behind the settings: sizes, budget specs
 * (SIZE, N%, per-device lists by index or GPU uuid) and the limit a spec sets
 * for one device, names, enum words, milliseconds and frame counts, plus the
 * reason plumbing they share with settings.c. Each turns one text into one
 * value or a one-line reason; no globals, no malloc, no locale, no getenv,
 * so all of it is thread-safe and fuzzable.
 *
 * Sizes are parsed with exact integer arithmetic: a typo is an error that
 * names the text, never a silent 1 byte or "unlimited" (the bug peers ship:
 * "1Gi" read as 1 byte).
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "vg_settings.h"

#define VG__NAME_MAX 200    /* VRAMGUARD_SHARED */
#define VG__ITEM_LEN 256    /* one budget list item */
/* ------------------------------------------------------- small helpers */

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_hex(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static char upper(char c) { return (c >= 'a' && c <= 'z') ? c - 32 : c; }

/* ASCII, locale-free: the preloaded process may have called setlocale. */
static bool eq_nocase(const char *a, size_t alen, const char *b)
{
    size_t i = 0;
    for (; i < alen && b[i]; i++)
        if (upper(a[i]) != upper(b[i]))
            return false;
    return i == alen && b[i] == '\0';
}

/* Copies up to `max` bytes of s for quoting in a one-line message: control
 * bytes become '?', and a longer text ends in "...". */
void vg__echo(char *out, size_t outlen, const char *s, size_t len,
              size_t max)
{
    size_t n = len < max ? len : max, j = 0;
    for (size_t i = 0; i < n && j + 1 < outlen; i++) {
        unsigned char c = (unsigned char)s[i];
        out[j++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    for (size_t i = 0; len > max && i < 3 && j + 1 < outlen; i++)
        out[j++] = '.';
    if (outlen)
        out[j] = '\0';
}

int vg__fail(vg__err_t e, const char *reason)
{
    if (e.s && e.n)
        snprintf(e.s, e.n, "%s", reason);
    return VG_ESETTING;
}

/* before'text'after, with the text echoed safely. */
static int fail_quoting(vg__err_t e, const char *before, const char *text,
                        size_t len, const char *after)
{
    char q[24];
    vg__echo(q, sizeof q, text, len, 16);
    if (e.s && e.n)
        snprintf(e.s, e.n, "%s'%s'%s", before, q, after);
    return VG_ESETTING;
}

/* ------------------------------------------------------------ numbers */

/* A decimal number "123" or "1.25": the whole part (exact) and the span of
 * fraction digits. `end` is the first byte after it. */
typedef struct vg__number {
    uint64_t whole;
    const char *frac;
    size_t frac_len;
    const char *end;
} vg__number_t;

/* Scans digits with at most one '.' fraction. Returns NULL, or the reason
 * the text is not a number. */
static const char *scan_number(const char *p, vg__number_t *n)
{
    if (*p == '\0')
        return "empty";
    if (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        return "leading whitespace";
    if (*p == '-')
        return "negative";
    if (!is_digit(*p))
        return "no digits";
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X'))
        return "hex is not accepted";
    n->whole = 0;
    for (; is_digit(*p); p++) {
        uint64_t d = (uint64_t)(*p - '0');
        if (n->whole > (UINT64_MAX - d) / 10)
            return "too large";
        n->whole = n->whole * 10 + d;
    }
    n->frac = p;
    n->frac_len = 0;
    if (*p == '.') {
        n->frac = ++p;
        for (; is_digit(*p); p++)
            n->frac_len++;
        if (n->frac_len == 0)
            return "no digits after '.'";
        if (*p == '.')
            return "more than one '.'";
    }
    n->end = p;
    return NULL;
}

static bool frac_is_zero(const vg__number_t *n)
{
    for (size_t i = 0; i < n->frac_len; i++)
        if (n->frac[i] != '0')
            return false;
    return true;
}

/* floor(0.<frac digits> * mult), exact for any number of digits: Horner's
 * rule from the last digit, using floor((k + y) / 10) == floor((k +
 * floor(y)) / 10) for integer k. Each step stays below 10 * mult. */
static uint64_t frac_times(const vg__number_t *n, uint64_t mult)
{
    uint64_t t = 0;
    for (size_t i = n->frac_len; i-- > 0;)
        t = ((uint64_t)(n->frac[i] - '0') * mult + t) / 10;
    return t;
}

/* ---------------------------------------------------------------- sizes */

static const struct {
    const char *name;
    uint64_t mult;
} units[] = {
    {"B", 1},
    {"K", 1ull << 10}, {"KI", 1ull << 10}, {"KIB", 1ull << 10},
    {"M", 1ull << 20}, {"MI", 1ull << 20}, {"MIB", 1ull << 20},
    {"G", 1ull << 30}, {"GI", 1ull << 30}, {"GIB", 1ull << 30},
    {"T", 1ull << 40}, {"TI", 1ull << 40}, {"TIB", 1ull << 40},
    {"KB", 1000ull}, {"MB", 1000000ull}, {"GB", 1000000000ull},
    {"TB", 1000000000000ull},
};

static uint64_t unit_mult(const char *u, size_t len)
{
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (eq_nocase(u, len, units[i].name))
            return units[i].mult;
    return 0;
}

/* whole * mult + floor(frac * mult), or a reason. */
static int size_value(const vg__number_t *n, uint64_t mult, uint64_t *bytes,
                      vg__err_t e)
{
    if (mult == 1 && !frac_is_zero(n))
        return vg__fail(e, "a fraction of a byte");
    uint64_t frac = frac_times(n, mult);
    if (n->whole > UINT64_MAX / mult ||
        n->whole * mult > UINT64_MAX - frac)
        return vg__fail(e, "too large");
    uint64_t v = n->whole * mult + frac;
    if (v == 0)
        return vg__fail(e, "must be at least 1 byte");
    *bytes = v;
    return VG_OK;
}

int vg__size_parse(const char *text, uint64_t *bytes, char *err, size_t errlen)
{
    vg__err_t e = {err, errlen};
    vg__number_t n;
    if (!text || !bytes)
        return vg__fail(e, "empty");
    const char *why = scan_number(text, &n);
    if (why)
        return vg__fail(e, why);
    const char *u = n.end;
    while (*u == ' ')
        u++;
    size_t ulen = 0;
    while (is_alpha(u[ulen]))
        ulen++;
    if (ulen == 0 && *n.end != '\0')
        return fail_quoting(e, "trailing text ", n.end, strlen(n.end), "");
    uint64_t mult = ulen ? unit_mult(u, ulen) : 1;
    if (mult == 0)
        return fail_quoting(e, "unknown unit ", u, ulen, "");
    if (u[ulen] != '\0')
        return fail_quoting(e, "trailing text ", u + ulen,
                            strlen(u + ulen), "");
    return size_value(&n, mult, bytes, e);
}

/* -------------------------------------------------------------- budgets */

/* A percent in the unit the limit uses: millionths of a percent, rounded
 * (what the user wrote, undoing double rounding: 33.3 is stored as
 * 33.29999...). */
static uint64_t percent_millionths(double percent)
{
    return (uint64_t)(percent * 1e6 + 0.5);
}

/* "N%" with 0 < N <= 100; text excludes the '%'. An N that rounds to 0
 * millionths would be a budget of 0 bytes, an error as "0%" is. */
static int percent_parse(const char *text, double *percent, vg__err_t e)
{
    vg__number_t n;
    if (*text == '\0')
        return vg__fail(e, "no digits");
    const char *why = scan_number(text, &n);
    if (why && strcmp(why, "too large") != 0)
        return vg__fail(e, why);
    if (!why && *n.end != '\0')
        return fail_quoting(e, "trailing text ", n.end, strlen(n.end), "");
    bool zero = !why && n.whole == 0 && frac_is_zero(&n);
    bool over = why || n.whole > 100 || (n.whole == 100 && !frac_is_zero(&n));
    if (zero || over)
        return vg__fail(e, "percent must be more than 0 and at most 100");
    uint64_t f = 0, scale = 1;
    for (size_t i = 0; i < n.frac_len && i < 15; i++) {
        f = f * 10 + (uint64_t)(n.frac[i] - '0');
        scale *= 10;
    }
    double v = (double)n.whole + (double)f / (double)scale;
    if (percent_millionths(v) == 0)
        return vg__fail(e, "percent rounds to 0 (the smallest is 0.000001)");
    *percent = v;
    return VG_OK;
}

/* SIZE or N%. */
static int value_parse(const char *text, vg__budget_value_t *v, vg__err_t e)
{
    size_t len = strlen(text);
    if (len > 0 && text[len - 1] == '%') {
        char num[VG__ITEM_LEN];
        snprintf(num, sizeof num, "%.*s", (int)(len - 1), text);
        v->unit = VG__BUDGET_PERCENT;
        return percent_parse(num, &v->percent, e);
    }
    v->unit = VG__BUDGET_BYTES;
    return vg__size_parse(text, &v->bytes, e.s, e.n);
}

/* Whether s (len bytes) starts as a uuid does: "GPU-" or "MIG-", in any
 * case (nvidia-smi prints upper case; users type either). */
static bool uuid_prefix(const char *s, size_t len)
{
    return len >= 4 && (eq_nocase(s, 4, "GPU-") || eq_nocase(s, 4, "MIG-"));
}

/* A uuid prefix then 8-4-4-4-12 hex digits, as nvidia-smi prints. */
static bool uuid_valid(const char *s, size_t len)
{
    if (len != 40 || !uuid_prefix(s, len))
        return false;
    for (size_t i = 4; i < len; i++) {
        bool dash = i == 12 || i == 17 || i == 22 || i == 27;
        if (dash ? s[i] != '-' : !is_hex(s[i]))
            return false;
    }
    return true;
}

/* DEV of "DEV=VALUE": an ordinal 0..63 or a uuid. Out: *ordinal, uuid. */
static int device_parse(const char *s, size_t len, int *ordinal,
                        char uuid[48], vg__err_t e)
{
    if (len == 0)
        return vg__fail(e, "no device before '='");
    if (uuid_prefix(s, len)) {
        if (!uuid_valid(s, len))
            return vg__fail(e, "bad uuid (expected "
                            "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)");
        memcpy(uuid, s, len);
        uuid[len] = '\0';
        *ordinal = -1;
        return VG_OK;
    }
    int v = 0;
    for (size_t i = 0; i < len; i++) {
        if (!is_digit(s[i]))
            return fail_quoting(e, "unknown device ", s, len,
                                " (an index 0-63 or GPU-uuid)");
        v = v < VG__MAX_DEVICES ? v * 10 + (s[i] - '0') : v;
    }
    if (v >= VG__MAX_DEVICES)
        return vg__fail(e, "device index out of range (0-63)");
    *ordinal = v;
    uuid[0] = '\0';
    return VG_OK;
}

static bool entry_exists(const vg__budget_spec_t *s, int ordinal,
                         const char *uuid)
{
    for (int i = 0; i < s->count; i++) {
        bool by_uuid = uuid[0] && strcasecmp(s->entry[i].uuid, uuid) == 0;
        if (by_uuid || (ordinal >= 0 && s->entry[i].ordinal == ordinal))
            return true;
    }
    return false;
}

/* One list item, NUL-terminated: VALUE (the default) or DEV=VALUE. */
static int item_parse(vg__budget_spec_t *s, const char *item, vg__err_t e)
{
    const char *eq = strchr(item, '=');
    vg__budget_value_t v = {0};
    if (!eq) {
        if (s->all.unit != VG__BUDGET_NONE)
            return vg__fail(e, "more than one default");
        int rc = value_parse(item, &v, e);
        if (rc == VG_OK)
            s->all = v;
        return rc;
    }
    int ordinal = -1;
    char uuid[48] = "";
    int rc = device_parse(item, (size_t)(eq - item), &ordinal, uuid, e);
    if (rc != VG_OK)
        return rc;
    if (entry_exists(s, ordinal, uuid))
        return vg__fail(e, "device given twice");
    if (s->count == VG__BUDGET_ENTRIES)
        return vg__fail(e, "more than 16 device entries");
    rc = value_parse(eq + 1, &v, e);
    if (rc != VG_OK)
        return rc;
    s->entry[s->count].ordinal = ordinal;
    memcpy(s->entry[s->count].uuid, uuid, sizeof uuid);
    s->entry[s->count++].value = v;
    return VG_OK;
}

/* Parses one item of a list; in a list, the reason names the item. */
static int list_item(vg__budget_spec_t *s, const char *p, size_t len,
                     bool is_list, vg__err_t e)
{
    char item[VG__ITEM_LEN], why[VG__REASON_LEN];
    if (len == 0)
        return vg__fail(e, "empty item in the list");
    if (len >= sizeof item)
        return vg__fail(e, "too long");
    memcpy(item, p, len);
    item[len] = '\0';
    int rc = item_parse(s, item, (vg__err_t){why, sizeof why});
    if (rc == VG_OK)
        return VG_OK;
    if (!is_list)
        return vg__fail(e, why);
    char q[VG__ECHO_MAX + 4];
    vg__echo(q, sizeof q, item, len, 32);
    if (e.s && e.n)
        snprintf(e.s, e.n, "item '%s': %s", q, why);
    return VG_ESETTING;
}

int vg__budget_spec_parse(const char *text, vg__budget_spec_t *spec,
                          char *err, size_t errlen)
{
    vg__err_t e = {err, errlen};
    vg__budget_spec_t s;
    memset(&s, 0, sizeof s);
    if (!text || !spec || *text == '\0')
        return vg__fail(e, "empty");
    bool is_list = strpbrk(text, ",=") != NULL;
    const char *p = text;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        int rc = list_item(&s, p, len, is_list, e);
        if (rc != VG_OK)
            return rc;
        if (!comma)
            break;
        p = comma + 1;
    }
    *spec = s;
    return VG_OK;
}

/* floor(total * percent / 100) in integers: the percent is taken to a
 * millionth (percent_millionths), so 33.3% of 80e9 is 26640000000, not one
 * byte less. */
static uint64_t percent_of(uint64_t total, double percent)
{
    const uint64_t den = 100000000; /* 100% in millionths of a percent */
    if (!(percent > 0.0))
        return 0;
    if (percent >= 100.0)
        return total;
    uint64_t p = percent_millionths(percent);
    return total / den * p + total % den * p / den;
}

static uint64_t value_limit(const vg__budget_value_t *v, uint64_t total)
{
    switch (v->unit) {
    case VG__BUDGET_BYTES:
        return v->bytes;
    case VG__BUDGET_PERCENT:
        return percent_of(total, v->percent);
    case VG__BUDGET_NONE:
    default:
        return VG__UNLIMITED;
    }
}

uint64_t vg__budget_spec_limit(const vg__budget_spec_t *spec, int ordinal,
                               const char *uuid, uint64_t device_total)
{
    if (!spec)
        return VG__UNLIMITED;
    for (int i = 0; uuid && uuid[0] && i < spec->count; i++)
        if (spec->entry[i].uuid[0] &&
            strcasecmp(spec->entry[i].uuid, uuid) == 0)
            return value_limit(&spec->entry[i].value, device_total);
    for (int i = 0; ordinal >= 0 && i < spec->count; i++)
        if (spec->entry[i].ordinal == ordinal)
            return value_limit(&spec->entry[i].value, device_total);
    return value_limit(&spec->all, device_total);
}

/* ------------------------------------------------- names, enums, counts */

/* [A-Za-z0-9._-]{1,200}, and not "." or "..". */
int vg__name_check(const char *text, vg__err_t e)
{
    size_t len = strlen(text);
    if (len == 0)
        return vg__fail(e, "empty");
    if (len > VG__NAME_MAX)
        return vg__fail(e, "too long (at most 200 characters)");
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        if (!is_alpha(c) && !is_digit(c) && c != '.' && c != '_' && c != '-')
            return fail_quoting(e, "character ", &text[i], 1,
                                " is not allowed");
    }
    if (strcmp(text, ".") == 0 || strcmp(text, "..") == 0)
        return vg__fail(e, "'.' and '..' are not names");
    return VG_OK;
}

/* The index of `text` among the '|'-separated words of `words`. */
int vg__enum_parse(const char *words, const char *text, int *index,
                   vg__err_t e)
{
    if (*text == '\0')
        return vg__fail(e, "empty");
    const char *w = words;
    for (int i = 0;; i++) {
        const char *bar = strchr(w, '|');
        size_t len = bar ? (size_t)(bar - w) : strlen(w);
        if (eq_nocase(w, len, text)) {
            *index = i;
            return VG_OK;
        }
        if (!bar)
            return vg__fail(e, "unknown value");
        w = bar + 1;
    }
}

/* Milliseconds: decimal digits only, 0..VG__MS_MAX. */
int vg__ms_parse(const char *text, int *ms, vg__err_t e)
{
    if (*text == '\0')
        return vg__fail(e, "empty");
    long v = 0;
    for (const char *p = text; *p; p++) {
        if (!is_digit(*p))
            return vg__fail(e, "not a whole number of milliseconds");
        v = v * 10 + (*p - '0');
        if (v > VG__MS_MAX)
            return vg__fail(e, "too large (at most 3600000)");
    }
    *ms = (int)v;
    return VG_OK;
}

/* A frame count: decimal digits only, 0..VG__MAX_FRAMES. */
int vg__frames_parse(const char *text, int *frames, vg__err_t e)
{
    if (*text == '\0')
        return vg__fail(e, "empty");
    int v = 0;
    for (const char *p = text; *p; p++) {
        if (!is_digit(*p))
            return vg__fail(e, "not a whole number of frames");
        v = v * 10 + (*p - '0');
        if (v > VG__MAX_FRAMES)
            return vg__fail(e, "too many frames (at most 32)");
    }
    *frames = v;
    return VG_OK;
}
