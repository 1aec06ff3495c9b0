/*
 * vg_settings.h — the settings: pure parsers (parse.c) and the table of
 * every VRAMGUARD_* setting (settings.c). No CUDA: parse.c, settings.c and
 * the CLI's `run` build on this alone.
 */
#ifndef VG_SETTINGS_H
#define VG_SETTINGS_H

#include "vg_base.h"

/* ----------------------------------------------------------- parse.c */

/* Where a reason goes: a caller's buffer (s may be NULL, n may be 0). */
typedef struct vg__err {
    char *s;
    size_t n;
} vg__err_t;

#define VG__REASON_LEN 160 /* a reason buffer; longer reasons are cut */
#define VG__ECHO_MAX 64    /* bytes of a bad value echoed in messages */
#define VG__MS_MAX 3600000 /* VRAMGUARD_WAIT_MS's upper bound: one hour */

/* Writes `reason` into e (when it has room); returns VG_ESETTING. */
int vg__fail(vg__err_t e, const char *reason);

/* Copies up to `max` bytes of s[0..len) into out for quoting in a one-line
 * message: control bytes become '?', and a longer text ends in "...". out
 * is always NUL-terminated when outlen > 0. */
void vg__echo(char *out, size_t outlen, const char *s, size_t len,
              size_t max);

typedef enum vg__budget_unit {
    VG__BUDGET_NONE = 0,  /* no limit */
    VG__BUDGET_BYTES,
    VG__BUDGET_PERCENT,   /* of the device's physical memory */
} vg__budget_unit_t;

typedef struct vg__budget_value {
    vg__budget_unit_t unit;
    uint64_t bytes;       /* for VG__BUDGET_BYTES */
    double percent;       /* for VG__BUDGET_PERCENT, 0 < percent <= 100 */
} vg__budget_value_t;

#define VG__BUDGET_ENTRIES 16

/* A parsed budget: one value for every device, and per-device overrides. */
typedef struct vg__budget_spec {
    vg__budget_value_t all;  /* applies to devices with no entry */
    int count;
    struct {
        int ordinal;         /* -1 when selected by uuid */
        char uuid[48];       /* "GPU-..." or "" */
        vg__budget_value_t value;
    } entry[VG__BUDGET_ENTRIES];
} vg__budget_spec_t;

/* Parses a size: "123", "8GiB", "8G", "512MiB", "1.5GiB", "10GB" (decimal),
 * "1Gi", "1.5g". Pure. VG_ESETTING with a message in err ("unknown unit
 * 'XB'", "empty", "trailing text", "too large", "negative") on failure. */
int vg__size_parse(const char *text, uint64_t *bytes, char *err, size_t errlen);

/* Parses a budget: SIZE, "N%", or a list "0=8GiB,1=4GiB,GPU-<uuid>=2GiB"
 * (an entry without "DEV=" sets the default for all devices). Pure. */
int vg__budget_spec_parse(const char *text, vg__budget_spec_t *spec,
                          char *err, size_t errlen);

/* The limit for one device: VG__UNLIMITED when the spec sets none. */
uint64_t vg__budget_spec_limit(const vg__budget_spec_t *spec, int ordinal,
                               const char *uuid, uint64_t device_total);

/* [A-Za-z0-9._-]{1,200}, and not "." or "..". VG_OK or VG_ESETTING with a
 * reason in e. */
int vg__name_check(const char *text, vg__err_t e);

/* Out: *index, the position of `text` (ASCII case-insensitive) among the
 * '|'-separated words of `words`. VG_ESETTING with a reason on no match. */
int vg__enum_parse(const char *words, const char *text, int *index,
                   vg__err_t e);

/* Decimal digits only, 0..VG__MS_MAX; out: *ms. */
int vg__ms_parse(const char *text, int *ms, vg__err_t e);

/* Decimal digits only, 0..VG__MAX_FRAMES; out: *frames. */
int vg__frames_parse(const char *text, int *frames, vg__err_t e);

/* -------------------------------------------------------- settings.c */

typedef enum vg__bad_ptr_policy {
    VG__BADPTR_WARN = 0,
    VG__BADPTR_REJECT,
    VG__BADPTR_ABORT,
} vg__bad_ptr_policy_t;

typedef enum vg__managed_mode {
    VG__MANAGED_COUNT = 0,
    VG__MANAGED_IGNORE,
    VG__MANAGED_DENY,
} vg__managed_mode_t;

typedef enum vg__pool_mode { VG__POOL_OFF = 0, VG__POOL_CACHE } vg__pool_mode_t;

typedef enum vg__log_level {
    VG__LOG_ERROR = 0,
    VG__LOG_WARN,
    VG__LOG_INFO,
    VG__LOG_DEBUG,
} vg__log_level_t;

typedef enum vg__shared_group {
    VG__SHARED_OWNER = 0, /* the region is mode 0600 */
    VG__SHARED_GROUP,     /* mode 0660: the file's group may attach */
} vg__shared_group_t;

/* Every setting, resolved. */
typedef struct vg__settings {
    vg__budget_spec_t budget;
    const char *budget_from; /* the variable(s) it came from, for messages:
                              * VRAMGUARD_BUDGET or HAMi's aliases; NULL
                              * when none is set (no budget) */
    char libcuda[4096];
    char shared[256];
    char shared_cache[4096];  /* HAMi's CUDA_DEVICE_MEMORY_SHARED_CACHE */
    vg__shared_group_t shared_group;
    int shared_create;        /* 0: attach to an existing region only */
    int wait_ms;              /* VRAMGUARD_WAIT_MS: 0 = refuse at once */
    char audit[4096];
    vg__bad_ptr_policy_t on_bad_pointer;
    vg__managed_mode_t managed;
    vg__pool_mode_t pool;
    vg__log_level_t log_level;
    int backtrace;   /* call-site frames per audited event, 0..VG__MAX_FRAMES */
    int leaks;       /* 1: leak report at exit even without the audit log */
    int verify;      /* 1: ask the driver about every intercepted allocation */
} vg__settings_t;

/* Looks up an environment variable; returns NULL when unset. */
typedef const char *(*vg__getenv_fn)(const char *name, void *ctx);

/* Parses every setting through `get` (pure: pass getenv-like lookups).
 * VG_ESETTING with "NAME='text': reason (accepted: ...)" in err on the first
 * bad value. */
int vg__settings_parse(vg__getenv_fn get, void *ctx, vg__settings_t *out,
                       char *err, size_t errlen);

/* One setting as --help, the docs and `vramguard run` show it. Every
 * string is static; only `flag` may be NULL. */
typedef struct vg__setting_info {
    const char *env;      /* "VRAMGUARD_BUDGET" */
    const char *flag;     /* the `vramguard run` option ("--budget"), or NULL */
    const char *metavar;  /* the flag's value in --help: "SIZE|N%", "PATH",
                           * or an enum's words "warn|reject|abort" */
    const char *deflt;    /* the default, "" when unset means none */
    const char *accepted; /* the values accepted, for error messages */
    const char *help;     /* what it does, ending "Accepted: <accepted>." */
} vg__setting_info_t;

/* Describes every setting (for --help, `vramguard run` and docs): calls fn
 * once per setting in table order. *info is valid only during the call. */
typedef void (*vg__setting_visit_fn)(const vg__setting_info_t *info,
                                     void *ctx);
void vg__settings_describe(vg__setting_visit_fn fn, void *ctx);

#endif /* VG_SETTINGS_H */
