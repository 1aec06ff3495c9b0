/*
 * cli_man.c — the hidden `__man-settings` command: the SETTINGS section of
 * the manual page (vramguard.1), in roff, from the settings table
 * (vg__settings_describe), so the manual, `run --help` and the parser
 * cannot disagree. The Makefile puts its output into vramguard.1.in.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "vg_settings.h"

/* Text for roff: a leading '.' or '\'' would be a request, '\' an escape,
 * and '-' should be a real minus in option names. */
static void roff(const char *s)
{
    if (*s == '.' || *s == '\'')
        fputs("\\&", stdout);
    for (; *s; s++) {
        if (*s == '\\')
            fputs("\\e", stdout);
        else if (*s == '-')
            fputs("\\-", stdout);
        else
            putchar(*s);
    }
}

static void man_setting(const vg__setting_info_t *in, void *ctx)
{
    (void)ctx;
    printf(".TP\n.B ");
    roff(in->env);
    if (in->flag) {
        printf("\n(\\fB");
        roff(in->flag);
        printf("\\fR \\fI");
        roff(in->metavar);
        printf("\\fR)");
    }
    printf("\n");
    roff(in->help);
    if (in->deflt[0]) {
        printf(" Default: ");
        roff(in->deflt);
        printf(".");
    }
    printf("\n");
}

int cli_man_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    vg__settings_describe(man_setting, NULL);
    return CLI_EXIT_OK;
}
