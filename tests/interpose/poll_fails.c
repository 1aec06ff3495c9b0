/*
 * poll_fails.c — a test-only interposer, preloaded into a program under
 * test: every poll() fails with ENOMEM, as the kernel's may when it cannot
 * allocate, so a test can see that the caller reports that error (and does
 * not mistake it for a timeout).
 */
#include <errno.h>
#include <poll.h>

int poll(struct pollfd *fds, nfds_t nfds, int timeout)
{
    (void)fds;
    (void)nfds;
    (void)timeout;
    errno = ENOMEM;
    return -1;
}
