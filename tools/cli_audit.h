/*
 * cli_audit.h — what the files of `vramguard audit` and `replay` share: one
 * parsed audit-log line (docs/audit-log.md, schema v1), the line reader
 * that counts and skips what it cannot use, and the loaded model that the
 * reports walk.
 *
 * cli_audit_parse.c parses one line (pure, bounded: no malloc; the fuzzer
 * links it alone); cli_audit_load.c reads files into a model;
 * cli_audit.c is the command and its text reports; cli_audit_syms.c turns
 * call sites into module+offset (and names, through addr2line when there is
 * one); cli_audit_svg.c draws the timeline; cli_replay.c replays a log.
 */
#ifndef VG_CLI_AUDIT_H
#define VG_CLI_AUDIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define AU_VERSION 1
#define AU_LINE_MAX (1024 * 1024) /* the writer's own cap; longer lines are skipped, "too long" */
#define AU_MAX_DEVICES 64       /* the engine's VG__MAX_DEVICES */
#define AU_SITE_MAX 64          /* frames kept per site; more are dropped */
#define AU_MODULE_MAX 4096      /* modules kept per exit event: a PyTorch process
                                 * maps several hundred; the 1 MiB line holds ~5000 */
#define AU_PATH_MAX 512
#define AU_NAME_MAX 64          /* api, kind, class, pattern, ... */
#define AU_CMD_MAX 1100         /* the writer caps cmd at 1 KiB */

/* ------------------------------------------------- cli_audit_parse.c */

/* X(name, word): the operations of schema v1. */
#define AU_OPS(X)                                                              \
    X(AU_OP_START, "start")                                                    \
    X(AU_OP_ALLOC, "alloc")                                                    \
    X(AU_OP_FREE, "free")                                                      \
    X(AU_OP_REFUSE, "refuse")                                                  \
    X(AU_OP_BAD_PTR, "bad_ptr")                                                \
    X(AU_OP_PRESSURE, "pressure")                                              \
    X(AU_OP_LEAK, "leak")                                                      \
    X(AU_OP_EXIT, "exit")

typedef enum au_op {
#define AU_ENUM_(name, word) name,
    AU_OPS(AU_ENUM_)
#undef AU_ENUM_
    AU_OP_COUNT
} au_op_t;

/* "alloc", ...; "?" out of range. Never NULL. */
const char *au_op_name(int op);

/* X(name, words): why a line was skipped, in report order. */
#define AU_SKIPS(X)                                                            \
    X(AU_SKIP_NOT_JSON, "not JSON")                                            \
    X(AU_SKIP_TRUNCATED, "truncated")                                          \
    X(AU_SKIP_TOO_LONG, "too long")                                            \
    X(AU_SKIP_VERSION, "unknown version")                                      \
    X(AU_SKIP_OP, "unknown op")                                                \
    X(AU_SKIP_FIELD, "bad or missing field")

typedef enum au_skip {
    AU_LINE_OK = 0,
#define AU_ENUM_(name, words) name,
    AU_SKIPS(AU_ENUM_)
#undef AU_ENUM_
    AU_SKIP_COUNT
} au_skip_t;

/* The words for a skip reason ("not JSON"); "?" out of range. */
const char *au_skip_name(int why);

/* Presence bits of the fields of one event. */
enum {
    AU_F_V = 1u << 0, AU_F_TS = 1u << 1, AU_F_PID = 1u << 2,
    AU_F_TID = 1u << 3, AU_F_OP = 1u << 4, AU_F_DEV = 1u << 5,
    AU_F_API = 1u << 6, AU_F_KIND = 1u << 7, AU_F_PTR = 1u << 8,
    AU_F_SIZE = 1u << 9, AU_F_RC = 1u << 10, AU_F_USED = 1u << 11,
    AU_F_BUDGET = 1u << 12, AU_F_SEQ = 1u << 13, AU_F_SITE = 1u << 14,
    AU_F_CMD = 1u << 15, AU_F_CLASS = 1u << 16, AU_F_COUNT = 1u << 17,
    AU_F_BYTES = 1u << 18, AU_F_MODULES = 1u << 19, AU_F_TO = 1u << 20,
};

typedef struct au_module {
    uint64_t base;
    char path[AU_PATH_MAX]; /* truncated if longer */
} au_module_t;

/* One line of the log. Strings are NUL-terminated and truncated to their
 * buffers; integers absent from the line are 0 (see `present`). ~2 MiB:
 * keep it off the stack. */
typedef struct au_event {
    uint32_t present; /* AU_F_* */
    au_op_t op;
    int64_t v, ts, pid, tid, dev, size, rc, used, budget, seq, offset;
    int64_t count, bytes, allocs, frees, refusals, bad_ptrs, live, live_bytes;
    uint64_t ptr;
    char api[AU_NAME_MAX], kind[AU_NAME_MAX], cls[AU_NAME_MAX];
    char pattern[AU_NAME_MAX], policy[AU_NAME_MAX];
    char from[AU_NAME_MAX], to[AU_NAME_MAX];
    char budget_spec[AU_NAME_MAX * 4], cmd[AU_CMD_MAX];
    int nsite;
    uint64_t site[AU_SITE_MAX]; /* innermost first */
    int nmodule;
    au_module_t module[AU_MODULE_MAX];
} au_event_t;

/* Parses one line (without its newline; it need not be NUL-terminated) of
 * a flat JSON object into *ev: strings, integers, arrays of strings, and
 * `modules`, an array of flat objects. Fields it does not know are
 * skipped, whatever their JSON type, up to a small nesting depth. Pure: no
 * allocation, no I/O, never reads past line[len). Returns AU_LINE_OK or
 * why the line cannot be used (ev is then partly written). */
au_skip_t au_parse_line(const char *line, size_t len, au_event_t *ev);

/* Reads lines of at most AU_LINE_MAX bytes from a stream, with a fixed
 * buffer: a longer line is consumed and reported as too long. */
typedef struct au_reader {
    FILE *f;
    long lineno;        /* of the line last returned */
    bool at_eof;
    char buf[AU_LINE_MAX + 2];
} au_reader_t;

/* The next line into r->buf (NUL-terminated, newline dropped), its length
 * in *len. Returns 1 for a line, 0 at the end, AU_SKIP_TOO_LONG (as a
 * negative number) for a line that did not fit, -1 on a read error. A last
 * line without its newline is returned like any other and *unterminated
 * is set. */
int au_reader_next(au_reader_t *r, size_t *len, bool *unterminated);

/* Counts of skipped lines, by reason, and where the first one was. */
typedef struct au_skips {
    long count[AU_SKIP_COUNT];
    long total;
    char first_file[256];
    long first_line;
} au_skips_t;

void au_skips_add(au_skips_t *s, au_skip_t why, const char *file, long line);
/* "skipped 3 lines (first at F:7): 2 not JSON, 1 unknown version" into out;
 * "" when nothing was skipped. */
void au_skips_format(const au_skips_t *s, char *out, size_t len);

/* -------------------------------------------------- cli_audit_load.c */

/* An open-addressed map from a pair of 64-bit keys to a 64-bit value, for
 * live allocations by (process, pointer). Keys are never removed: a value
 * may be overwritten, and AU_MAP_DEAD marks a freed entry. */
#define AU_MAP_DEAD UINT64_MAX
typedef struct au_map {
    struct au_map_slot { uint64_t a, b, val; bool used; } *slot;
    size_t cap, count;
} au_map_t;

/* Returns a pointer to the value of (a, b), or NULL when absent. */
uint64_t *au_map_find(au_map_t *m, uint64_t a, uint64_t b);
/* Sets (a, b) to val. -1 when out of memory. */
int au_map_put(au_map_t *m, uint64_t a, uint64_t b, uint64_t val);
void au_map_free(au_map_t *m);

/* One alloc, free, refuse or pressure event, compact. */
typedef struct au_rec {
    int64_t ts;
    int64_t used, budget, seq;
    uint64_t ptr, size;
    uint32_t order;   /* position in the input, for a stable order */
    uint32_t proc;    /* index into model.proc */
    uint32_t site;    /* index into model.site; 0 = none recorded */
    uint32_t tid;
    int32_t rc;
    uint16_t api, kind; /* indexes into model.name */
    int16_t dev;
    uint8_t op;       /* au_op_t */
} au_rec_t;

typedef struct au_site {
    int nframes;
    uint64_t *frame;
    uint32_t proc; /* the process first seen with it (for its modules) */
} au_site_t;

typedef struct au_proc {
    int64_t pid;
    int file;             /* which log it came from (pids repeat across hosts) */
    char *cmd;            /* NULL without a start event */
    int64_t first_ts, last_ts;
    bool started, exited;
    int64_t allocs, frees, refusals, bad_ptrs, live, live_bytes; /* exit */
    int nmodule;
    au_module_t *module;  /* from the exit event, sorted by base */
    bool has_leak_events;
    int64_t used[AU_MAX_DEVICES]; /* while walking the timeline */
} au_proc_t;

typedef struct au_leak {
    uint32_t proc, site;
    int16_t dev;
    int64_t count, bytes;
} au_leak_t;

typedef struct au_model {
    au_rec_t *rec;
    size_t nrec, caprec;
    au_proc_t *proc;
    size_t nproc, capproc, last_proc;
    au_site_t *site;      /* site[0] is "none recorded" */
    size_t nsite, capsite;
    au_map_t site_index;  /* hash of frames -> candidate site */
    char **name;          /* interned api/kind/class words; name[0] = "" */
    size_t nname, capname;
    au_leak_t *leak;
    size_t nleak, capleak;
    long bad_by_class[32]; /* indexed by name id, first 32 names */
    uint32_t bad_class_name[32];
    int nbad_class;
    long bad_ptrs, pressure_changes, events;
    int nfiles;
    au_skips_t skips;
} au_model_t;

/* Reads `path` into m (events are appended; call au_model_finish after the
 * last file). Returns 0; 1 when the file cannot be opened or read (a
 * one-line error naming it is printed); 2 when no line of a non-empty file
 * could be used (not an audit log: the error names the file and line). */
int au_model_load(au_model_t *m, const char *cmd, const char *path);
/* Sorts the events by time (stable: input order breaks ties). */
void au_model_finish(au_model_t *m);
void au_model_free(au_model_t *m);
const char *au_model_name(const au_model_t *m, uint32_t id);

/* Walks the events in order, keeping each process's latest `used` per
 * device; calls fn with the device's total (the sum over processes) after
 * each event that carries one. */
typedef void (*au_walk_fn)(const au_rec_t *r, int64_t dev_total, void *ctx);
void au_model_walk(au_model_t *m, au_walk_fn fn, void *ctx);

/* --------------------------------------------------- cli_audit_syms.c */

/* Symbolises m's sites for printing: "path+0xoff (function)" per frame. */
typedef struct au_syms au_syms_t;
/* Builds names for the sites listed (ids), running addr2line at most once
 * per module when it is on PATH. Never fails: without names, frames read
 * "path+0xoff", and without modules, "0xaddr". */
au_syms_t *au_syms_create(const au_model_t *m, const uint32_t *ids, size_t n);
/* Prints site `id`'s frames, one per line, each prefixed by `indent`. */
void au_syms_print(const au_syms_t *s, FILE *f, uint32_t id,
                   const char *indent, int max_frames);
void au_syms_destroy(au_syms_t *s);

/* ---------------------------------------------------- cli_audit_svg.c */

/* Writes the timeline as SVG to `path` atomically (a temporary file in the
 * same folder, then rename). 0, or -1 with errno set. */
int au_svg_write(au_model_t *m, const char *path, const char *title);

#endif /* VG_CLI_AUDIT_H */
