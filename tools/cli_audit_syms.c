/*
 * cli_audit_syms.c — call sites for humans. A `site` frame is a return
 * address in the recorded process; the `modules` of its exit event say
 * where each object was loaded, so a frame reads "path+0xoffset". When
 * addr2line is on PATH it runs once per module with all that module's
 * offsets and adds function names; without it (or for a module that is
 * not on this machine) the offsets alone are printed. Symbolising is
 * best-effort and never fails the report.
 */
#include <fcntl.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli_audit.h"

#define SYMS_BATCH 1024   /* offsets per addr2line run; more go unnamed */
#define SYMS_OUT_MAX (4u << 20)

extern char **environ;

typedef struct frame {
    uint64_t addr;
    const au_module_t *mod; /* NULL when no module contains it */
    char *name;             /* function, or NULL */
    bool tried;             /* given to addr2line already */
} frame_t;

struct au_syms {
    size_t n;
    uint32_t *ids;
    frame_t **frames; /* frames[i][0..nframes) for ids[i] */
    const au_model_t *m;
};

/* The module with the highest base <= addr among p's (sorted by base). */
static const au_module_t *module_of(const au_proc_t *p, uint64_t addr)
{
    const au_module_t *best = NULL;
    for (int i = 0; i < p->nmodule && p->module[i].base <= addr; i++)
        best = &p->module[i];
    return best;
}

static const au_module_t *find_module(const au_model_t *m, uint32_t proc, uint64_t addr)
{
    const au_module_t *mod = module_of(&m->proc[proc], addr);
    for (size_t i = 0; !mod && i < m->nproc; i++)
        mod = module_of(&m->proc[i], addr);
    return mod;
}

/* Runs argv, returns its stdout (NUL-terminated, malloc'd) or NULL. */
static char *run_capture(char **argv)
{
    int fd[2];
    if (pipe2(fd, O_CLOEXEC) != 0)
        return NULL;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fd[1], 1);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fd[1]);
    char *out = NULL;
    size_t len = 0, cap = 0;
    ssize_t got = rc == 0 ? 1 : 0;
    while (got > 0) {
        if (len + 4096 + 1 > cap) {
            char *more = cap < SYMS_OUT_MAX ? realloc(out, cap = cap ? cap * 2 : 8192) : NULL;
            if (!more)
                break;
            out = more;
        }
        got = read(fd[0], out + len, cap - len - 1);
        len += got > 0 ? (size_t)got : 0;
    }
    close(fd[0]);
    int st = 0;
    if (rc == 0)
        waitpid(pid, &st, 0);
    if (rc != 0 || !out || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        free(out);
        return NULL;
    }
    out[len] = '\0';
    return out;
}

/* Names every frame of module `mod` in one addr2line run. */
static void name_module(au_syms_t *s, const au_module_t *mod)
{
    if (access(mod->path, R_OK) != 0)
        return;
    char *argv[SYMS_BATCH + 7] = {"addr2line", "-f", "-C", "-e", (char *)mod->path};
    frame_t *which[SYMS_BATCH];
    char hex[SYMS_BATCH][20];
    int n = 0;
    for (size_t i = 0; i < s->n && n < SYMS_BATCH; i++) {
        const au_site_t *site = &s->m->site[s->ids[i]];
        for (int k = 0; k < site->nframes && n < SYMS_BATCH; k++) {
            frame_t *f = &s->frames[i][k];
            if (f->mod != mod || f->tried)
                continue;
            f->tried = true;
            /* A return address: look up the call before it. */
            uint64_t off = f->addr - mod->base;
            snprintf(hex[n], sizeof hex[n], "0x%llx", (unsigned long long)(off ? off - 1 : 0));
            argv[5 + n] = hex[n];
            which[n++] = f;
        }
    }
    argv[5 + n] = NULL;
    char *out = n ? run_capture(argv) : NULL;
    char *line = out, *save = NULL;
    for (int i = 0; out && i < n; i++) {
        char *fn = strtok_r(i == 0 ? line : NULL, "\n", &save);
        char *loc = strtok_r(NULL, "\n", &save);
        if (!fn || !loc)
            break;
        if (strcmp(fn, "??") != 0)
            which[i]->name = strdup(fn);
    }
    free(out);
}

au_syms_t *au_syms_create(const au_model_t *m, const uint32_t *ids, size_t n)
{
    au_syms_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->m = m;
    s->ids = malloc((n ? n : 1) * sizeof *s->ids);
    s->frames = calloc(n ? n : 1, sizeof *s->frames);
    if (!s->ids || !s->frames) {
        au_syms_destroy(s);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        const au_site_t *site = &m->site[ids[i]];
        s->ids[s->n] = ids[i];
        s->frames[s->n] = calloc((size_t)site->nframes + 1, sizeof **s->frames);
        if (!s->frames[s->n])
            break;
        for (int k = 0; k < site->nframes; k++)
            s->frames[s->n][k] = (frame_t){site->frame[k],
                                           find_module(m, site->proc, site->frame[k]), NULL,
                                           false};
        s->n++;
    }
    for (size_t i = 0; i < s->n; i++)
        for (int k = 0; k < m->site[s->ids[i]].nframes; k++) {
            const au_module_t *mod = s->frames[i][k].mod;
            if (mod && !s->frames[i][k].tried)
                name_module(s, mod);
        }
    return s;
}

void au_syms_print(const au_syms_t *s, FILE *f, uint32_t id, const char *indent,
                   int max_frames)
{
    if (id == 0 || !s) {
        fprintf(f, "%s(no call site recorded: set VRAMGUARD_BACKTRACE=N)\n", indent);
        return;
    }
    size_t i = 0;
    while (i < s->n && s->ids[i] != id)
        i++;
    const au_site_t *site = &s->m->site[id];
    for (int k = 0; k < site->nframes && k < max_frames; k++) {
        const frame_t *fr = i < s->n ? &s->frames[i][k] : NULL;
        fprintf(f, "%s#%d ", indent, k);
        if (fr && fr->mod)
            fprintf(f, "%s+0x%llx", fr->mod->path,
                    (unsigned long long)(fr->addr - fr->mod->base));
        else
            fprintf(f, "0x%llx", (unsigned long long)site->frame[k]);
        fprintf(f, "%s%s%s\n", fr && fr->name ? " (" : "", fr && fr->name ? fr->name : "",
                fr && fr->name ? ")" : "");
    }
    if (site->nframes > max_frames)
        fprintf(f, "%s... %d more frames\n", indent, site->nframes - max_frames);
}

void au_syms_destroy(au_syms_t *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++) {
        for (int k = 0; k < s->m->site[s->ids[i]].nframes; k++)
            free(s->frames[i][k].name);
        free(s->frames[i]);
    }
    free(s->frames);
    free(s->ids);
    free(s);
}
