/*
 * auditcli.h — what the tests of `vramguard audit` (test_audit_cli.c) and
 * `vramguard replay` (test_replay_cli.c) share: the CLI run the same way
 * each time, the fixtures' folder, and private temporary folders.
 *
 * Needs VG_TEST_BUILD (tests/run-tests.sh exports it) and the repository
 * root as the working folder (for the fixtures).
 */
#ifndef VG_AUDITCLI_H
#define VG_AUDITCLI_H

#include <criterion/criterion.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clientrun.h"

#define DATA "tests/data/audit/"

/* Runs build/vramguard with args (NULL-terminated, without argv[0]) in the
 * runner's environment with TZ=UTC (times in reports are local) and
 * without VRAMGUARD_* (a budget would change replay). */
static inline void cli(cli_result_t *r, const char *const *args)
{
    static const char *const drop[] = {"VRAMGUARD_", "TZ=", "LD_PRELOAD=", NULL};
    char **env = env_make(drop, ENV("TZ=UTC"));
    cli_result_of(r, env, args);
    env_free(env);
}

#define EXPECT_IN(hay, needle)                                                 \
    cr_expect_not_null(strstr((hay), (needle)), "missing \"%s\" in:\n%s", (needle), (hay))

/* A private folder under /tmp, removed by rm_tree. */
static inline void tmp_dir(char *out, size_t len)
{
    snprintf(out, len, "/tmp/vg-audit-test.XXXXXX");
    cr_assert_not_null(mkdtemp(out));
}

static inline void rm_tree(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[4096];
    while (d && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
    if (d)
        closedir(d);
    rmdir(dir);
}

#endif /* VG_AUDITCLI_H */
