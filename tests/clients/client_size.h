/*
 * client_size.h — the size argument every client program takes.
 */
#ifndef VG_CLIENT_SIZE_H
#define VG_CLIENT_SIZE_H

#include <stdlib.h>
#include <string.h>

/* "64MiB", "1GiB", "512KiB", "4096": bytes, or 0 when malformed. */
static inline size_t client_parse_size(const char *s)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    static const struct { const char *suffix; unsigned shift; } units[] = {
        {"", 0}, {"B", 0}, {"KiB", 10}, {"MiB", 20}, {"GiB", 30}};
    for (size_t i = 0; end != s && i < sizeof units / sizeof units[0]; i++)
        if (!strcmp(end, units[i].suffix))
            return (size_t)(v << units[i].shift);
    return 0;
}

#endif
