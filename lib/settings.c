/*
 * settings.c — every VRAMGUARD_* setting, parsed from the environment.
 *
 * VG__SETTINGS below is the one list of settings: it drives parsing
 * (vg__settings_parse), the `vramguard run` flags and --help (through
 * vg__settings_describe) and the table in docs/settings.md (kept in sync by
 * hand; a unit test fails when a name or a flag is missing there). The value
 * parsers each row uses (sizes, budgets, names, enum words, milliseconds,
 * frames) live in parse.c. Everything here is pure: no globals, no malloc, no
 * locale, no getenv of its own (the caller passes the lookup), so it is
 * thread-safe and fuzzable.
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "vg_settings.h"

/* ------------------------------------------------------------- the table */

typedef enum vg__set_type {
    VG__SET_BUDGET, /* vg__budget_spec_t, with the HAMi aliases */
    VG__SET_PATH,   /* char[]: any non-empty text that fits */
    VG__SET_NAME,   /* char[]: [A-Za-z0-9._-]{1,200} */
    VG__SET_ENUM,   /* an enum whose values are the accepted words, in order */
    VG__SET_MS,     /* int: milliseconds, 0..VG__MS_MAX */
    VG__SET_FRAMES, /* int: call-site frames, 0..VG__MAX_FRAMES */
} vg__set_type_t;

#define VG__BUDGET_ACCEPTED                                                    \
    "SIZE like 8GiB, 512MiB, 1.5G, 10GB; N% of the device; or DEV=SIZE,... "   \
    "with DEV an index or GPU-uuid"

/* X(field, env, type, default, flag, accepted, help). A NULL default leaves
 * the field zeroed (no budget, no shared ledger, no audit log). `flag` is the
 * `vramguard run` option that sets the variable for the child (NULL for a
 * setting with no flag); the CLI generates its parsing and --help from it.
 * For ENUM rows the accepted text is the list of words, and word i is enum
 * value i. */
#define VG__SETTINGS(X)                                                        \
    X(budget, "VRAMGUARD_BUDGET", VG__SET_BUDGET, NULL, "--budget",           \
      VG__BUDGET_ACCEPTED,                                                    \
      "Device memory budget; unset means no limit. Plain numbers are "        \
      "bytes. When unset, HAMi's CUDA_DEVICE_MEMORY_LIMIT and "               \
      "CUDA_DEVICE_MEMORY_LIMIT_<i> are read instead.")                       \
    X(libcuda, "VRAMGUARD_LIBCUDA", VG__SET_PATH, "libcuda.so.1", "--libcuda", \
      "a library file name or path", "The real CUDA driver to load.")        \
    X(shared, "VRAMGUARD_SHARED", VG__SET_NAME, NULL, "--shared",             \
      "1-200 of A-Z a-z 0-9 . _ -",                                           \
      "Name of a ledger shared by every process that sets the same name, "    \
      "so they draw on one budget (a region in /dev/shm); unset means a "      \
      "per-process budget. See docs/shared-budgets.md.")                      \
    X(shared_cache, "CUDA_DEVICE_MEMORY_SHARED_CACHE", VG__SET_PATH, NULL,    \
      NULL, "an absolute file path",                                          \
      "HAMi alias: the shared region at this path instead of "                \
      "/dev/shm/vramguard.NAME; read when VRAMGUARD_SHARED is unset.")        \
    X(shared_group, "VRAMGUARD_SHARED_GROUP", VG__SET_ENUM, "off",            \
      "--shared-group", "off|on",                                             \
      "Create the shared region group-readable and -writable (0660) and "     \
      "attach to one owned by another user of its group; off means "          \
      "owner-only (0600).")                                                   \
    X(shared_create, "VRAMGUARD_SHARED_CREATE", VG__SET_ENUM, "1", NULL,      \
      "0|1",                                                                  \
      "0: attach only to a shared region that exists, never make it; a "      \
      "process that finds none refuses every allocation (fail closed). "     \
      "vramguard run sets 0 for its command tree, so a process that "        \
      "outlives the run cannot start an unlimited region of its own.")        \
    X(wait_ms, "VRAMGUARD_WAIT_MS", VG__SET_MS, "0", "--wait-ms",             \
      "0 to 3600000 milliseconds",                                            \
      "With a shared budget, a refused request waits up to this long, "       \
      "first come first served, for other processes to free before it "       \
      "returns CUDA_ERROR_OUT_OF_MEMORY; 0 refuses at once.")                 \
    X(audit, "VRAMGUARD_AUDIT", VG__SET_PATH, NULL, "--audit", "a file path", \
      "Append every allocation, free, refusal, bad pointer and pressure "     \
      "change to this file, one JSON object per line (docs/audit-log.md); "   \
      "unset means no audit log. A file that cannot be opened refuses "       \
      "every allocation (fail closed).")                                      \
    X(on_bad_pointer, "VRAMGUARD_ON_BAD_POINTER", VG__SET_ENUM, "warn",       \
      "--on-bad-pointer", "warn|reject|abort",                                \
      "What to do when a pointer we never handed out is freed or used: "      \
      "log and pass it on, refuse it with CUDA_ERROR_INVALID_VALUE, or "      \
      "abort the process. Memory that may be real (foreign pointers, "        \
      "VMM handles it never saw) is always passed on.")                       \
    X(managed, "VRAMGUARD_MANAGED", VG__SET_ENUM, "count", "--managed",       \
      "count|ignore|deny",                                                    \
      "Managed (unified) memory: charge it to the budget, let it through "    \
      "uncharged, or refuse it.")                                             \
    X(pool, "VRAMGUARD_POOL", VG__SET_ENUM, "off", "--pool", "off|cache",     \
      "cache: serve each cuMemAlloc of up to 1 MiB from a pool that keeps "   \
      "freed blocks for reuse (docs/pool.md); off: every allocation goes to " \
      "the driver.")                                                          \
    X(log_level, "VRAMGUARD_LOG", VG__SET_ENUM, "warn", "--log",              \
      "error|warn|info|debug", "Least severe message written to stderr.")    \
    X(backtrace, "VRAMGUARD_BACKTRACE", VG__SET_FRAMES, "0", "--backtrace",   \
      "0 to 32 frames",                                                       \
      "Call-site frames recorded with each audited allocation, refusal and "  \
      "bad pointer, and used to group the leak report; 0 records none "      \
      "(each frame costs an unwind, about 1 us for a few).")                 \
    X(leaks, "VRAMGUARD_LEAKS", VG__SET_ENUM, "0", "--leaks-report", "0|1",   \
      "1: at exit, report the allocations still live, grouped by call site, " \
      "on stderr (always done when the audit log is on).")                  \
    X(verify, "VRAMGUARD_VERIFY", VG__SET_ENUM, "0", "--verify", "0|1",       \
      "1: ask the driver whether each allocation it returns is device "       \
      "memory of at least the requested size (about 200 ns per "             \
      "allocation, more than the rest of the shim); 0 trusts the driver.")

typedef struct vg__setting_row {
    const char *env;
    const char *flag;
    vg__set_type_t type;
    const char *deflt;
    const char *accepted;
    const char *help; /* help and accepted text, one static string */
    size_t offset, size;
} vg__setting_row_t;

#define VG__ROW_(field, env, type, deflt, flag, accepted, help)                \
    {env, flag, type, deflt, accepted, help " Accepted: " accepted ".",      \
     offsetof(vg__settings_t, field), sizeof(((vg__settings_t *)0)->field)},
static const vg__setting_row_t rows[] = {VG__SETTINGS(VG__ROW_)};
#undef VG__ROW_

/* Rows are stored through their offset: an ENUM field must be an int-sized
 * enum and a BUDGET field a whole vg__budget_spec_t. */
#define VG__ROW_CHECK_(field, env, type, deflt, flag, accepted, help)          \
    _Static_assert((type) != VG__SET_ENUM ||                                   \
                       sizeof(((vg__settings_t *)0)->field) == sizeof(int),   \
                   "enum setting " env " must be int-sized");                  \
    _Static_assert((type) != VG__SET_MS ||                                     \
                       sizeof(((vg__settings_t *)0)->field) == sizeof(int),   \
                   "ms setting " env " must be an int");                       \
    _Static_assert((type) != VG__SET_FRAMES ||                                 \
                       sizeof(((vg__settings_t *)0)->field) == sizeof(int),   \
                   "frames setting " env " must be an int");                   \
    _Static_assert((type) != VG__SET_BUDGET ||                                 \
                       sizeof(((vg__settings_t *)0)->field) ==                 \
                           sizeof(vg__budget_spec_t),                          \
                   "budget setting " env " must be a vg__budget_spec_t");
VG__SETTINGS(VG__ROW_CHECK_)
#undef VG__ROW_CHECK_

#define VG__ROW_COUNT (sizeof rows / sizeof rows[0])

/* HAMi's variables are read only when VRAMGUARD_BUDGET is unset. HAMi-core
 * reads them as bytes with an optional k/m/g suffix (1024-based), which
 * vg__size_parse reads the same way, so no separate parser is needed. */
#define VG__HAMI_ALL "CUDA_DEVICE_MEMORY_LIMIT"
#define VG__HAMI_ACCEPTED                                                      \
    "SIZE like 1g, 1024m, 8GiB or a byte count; HAMi alias of "              \
    "VRAMGUARD_BUDGET"

/* ------------------------------------------------------------- settings */

/* The user-facing shape: NAME='text': reason (accepted: ...). */
static int fail_setting(vg__err_t e, const char *name,
                        const char *text, const char *reason,
                        const char *accepted)
{
    char q[VG__ECHO_MAX + 4];
    vg__echo(q, sizeof q, text, strlen(text), VG__ECHO_MAX);
    if (e.s && e.n)
        snprintf(e.s, e.n, "%s='%s': %s (accepted: %s)", name, q, reason,
                 accepted);
    return VG_ESETTING;
}

/* HAMi's variables: CUDA_DEVICE_MEMORY_LIMIT for every device and
 * CUDA_DEVICE_MEMORY_LIMIT_<i> for device i. Errors name the alias. */
static int budget_from_hami(vg__getenv_fn get, void *ctx,
                            vg__budget_spec_t *s, vg__err_t e)
{
    char why[VG__REASON_LEN], name[40];
    for (int i = -1; i < VG__MAX_DEVICES; i++) {
        if (i < 0)
            snprintf(name, sizeof name, "%s", VG__HAMI_ALL);
        else
            snprintf(name, sizeof name, "%s_%d", VG__HAMI_ALL, i);
        const char *text = get(name, ctx);
        uint64_t bytes;
        if (!text)
            continue;
        if (vg__size_parse(text, &bytes, why, sizeof why) != VG_OK)
            return fail_setting(e, name, text, why,
                                VG__HAMI_ACCEPTED);
        if (i >= 0 && s->count == VG__BUDGET_ENTRIES)
            return fail_setting(e, name, text,
                                "more than 16 device entries",
                                VG__HAMI_ACCEPTED);
        vg__budget_value_t v = {.unit = VG__BUDGET_BYTES, .bytes = bytes};
        if (i < 0) {
            s->all = v;
            continue;
        }
        s->entry[s->count].ordinal = i;
        s->entry[s->count++].value = v;
    }
    return VG_OK;
}

/* HAMi's shared-region path is an alias, read only when VRAMGUARD_SHARED
 * is unset (its row comes first in the table, so s->shared is parsed by
 * then): whatever it holds, empty included, cannot fail a process that
 * names its own region. */
static bool row_overridden(const vg__setting_row_t *r, const vg__settings_t *s)
{
    return r->offset == offsetof(vg__settings_t, shared_cache) && s->shared[0];
}

/* Text fields (PATH and NAME): non-empty, fits its array with its NUL. */
static int text_store(const vg__setting_row_t *r, const char *text, char *dst,
                      vg__err_t e)
{
    size_t len = strlen(text);
    if (r->type == VG__SET_NAME && vg__name_check(text, e) != VG_OK)
        return VG_ESETTING;
    if (len == 0)
        return vg__fail(e, "empty");
    if (len >= r->size) {
        if (e.s && e.n)
            snprintf(e.s, e.n, "too long (at most %zu bytes)", r->size - 1);
        return VG_ESETTING;
    }
    memcpy(dst, text, len + 1);
    return VG_OK;
}

/* Parses one row's text into its field of *s; a reason in why on failure. */
static int row_store(const vg__setting_row_t *r, const char *text,
                     vg__settings_t *s, vg__err_t why)
{
    char *field = (char *)s + r->offset;
    int index, rc;
    switch (r->type) {
    case VG__SET_BUDGET:
        return vg__budget_spec_parse(text, (vg__budget_spec_t *)(void *)field,
                                     why.s, why.n);
    case VG__SET_PATH:
    case VG__SET_NAME:
        return text_store(r, text, field, why);
    case VG__SET_ENUM:
        rc = vg__enum_parse(r->accepted, text, &index, why);
        if (rc == VG_OK)
            memcpy(field, &index, sizeof index);
        return rc;
    case VG__SET_MS:
        rc = vg__ms_parse(text, &index, why);
        if (rc == VG_OK)
            memcpy(field, &index, sizeof index);
        return rc;
    case VG__SET_FRAMES:
        rc = vg__frames_parse(text, &index, why);
        if (rc == VG_OK)
            memcpy(field, &index, sizeof index);
        return rc;
    }
    return vg__fail(why, "unknown setting type");
}

int vg__settings_parse(vg__getenv_fn get, void *ctx, vg__settings_t *out,
                       char *err, size_t errlen)
{
    vg__err_t e = {err, errlen};
    vg__settings_t s;
    char why[VG__REASON_LEN];
    if (!get || !out)
        return vg__fail(e, "no environment lookup or output");
    memset(&s, 0, sizeof s);
    for (size_t i = 0; i < VG__ROW_COUNT; i++) {
        const vg__setting_row_t *r = &rows[i];
        if (row_overridden(r, &s))
            continue;
        const char *text = get(r->env, ctx);
        if (!text && r->type == VG__SET_BUDGET) {
            int rc = budget_from_hami(get, ctx, &s.budget, e);
            if (rc != VG_OK)
                return rc;
            /* Per-device entries are what messages are about. */
            s.budget_from = s.budget.count ? VG__HAMI_ALL "_<i>"
                            : s.budget.all.unit != VG__BUDGET_NONE ? VG__HAMI_ALL
                                                                     : NULL;
            continue;
        }
        if (r->type == VG__SET_BUDGET)
            s.budget_from = r->env;
        if (!text)
            text = r->deflt;
        vg__err_t reason = {why, sizeof why};
        if (text && row_store(r, text, &s, reason) != VG_OK)
            return fail_setting(e, r->env, text, why, r->accepted);
    }
    *out = s;
    return VG_OK;
}

/* What a flag's value looks like in --help: ENUM rows list their words. */
static const char *row_metavar(const vg__setting_row_t *r)
{
    switch (r->type) {
    case VG__SET_BUDGET:
        return "SIZE|N%";
    case VG__SET_PATH:
        return "PATH";
    case VG__SET_NAME:
        return "NAME";
    case VG__SET_ENUM:
        return r->accepted;
    case VG__SET_MS:
        return "MS";
    case VG__SET_FRAMES:
        return "N";
    }
    return "VALUE";
}

void vg__settings_describe(vg__setting_visit_fn fn, void *ctx)
{
    for (size_t i = 0; fn && i < VG__ROW_COUNT; i++) {
        const vg__setting_row_t *r = &rows[i];
        vg__setting_info_t info = {
            .env = r->env,
            .flag = r->flag,
            .metavar = row_metavar(r),
            .deflt = r->deflt ? r->deflt : "",
            .accepted = r->accepted,
            .help = r->help,
        };
        fn(&info, ctx);
    }
}
