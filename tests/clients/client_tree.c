/*
 * client_tree.c — a process tree for the run-tree budget tests
 * (tests/test_cli.c): a parent that starts children which each allocate.
 *
 *   client_tree CHILDREN BYTES
 *       starts CHILDREN copies of itself (fork, then exec of this program,
 *       so each is a fresh process under whatever LD_PRELOAD it inherits);
 *       each allocates BYTES on device 0, then BYTES more, and holds both
 *       until every child has reported. Prints
 *       "ok=N refused=M other=K shared=NAME region=yes|no" where NAME is
 *       VRAMGUARD_SHARED as the children got it and region says whether
 *       /dev/shm/vramguard.NAME existed while they held their memory.
 *   client_tree child BYTES   (internal) one child: prints "RC1 RC2", then
 *       waits for stdin to close and exits without freeing.
 *   exit: 0 ran, 2 usage, 3 setup failed
 */
#include <cuda.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_CHILDREN 8

static int child(size_t bytes)
{
    CUdevice dev;
    CUcontext ctx;
    CUdeviceptr a = 0, b = 0;
    if (cuInit(0) != CUDA_SUCCESS || cuDeviceGet(&dev, 0) != CUDA_SUCCESS ||
        cuDevicePrimaryCtxRetain(&ctx, dev) != CUDA_SUCCESS || cuCtxSetCurrent(ctx) != CUDA_SUCCESS)
        return 3;
    CUresult r1 = cuMemAlloc(&a, bytes);
    CUresult r2 = cuMemAlloc(&b, bytes);
    printf("%d %d\n", (int)r1, (int)r2);
    fflush(stdout);
    char buf[16];
    while (read(0, buf, sizeof buf) > 0)
        ;
    return 0;
}

typedef struct kid {
    pid_t pid;
    int out, in;
} kid_t;

static int start(kid_t *k, const char *bytes)
{
    int o[2], i[2];
    if (pipe2(o, O_CLOEXEC) != 0 || pipe2(i, O_CLOEXEC) != 0)
        return -1;
    k->pid = fork();
    if (k->pid < 0)
        return -1;
    if (k->pid == 0) {
        dup2(i[0], 0);
        dup2(o[1], 1);
        close(i[0]), close(i[1]), close(o[0]), close(o[1]);
        execl("/proc/self/exe", "client_tree", "child", bytes, (char *)NULL);
        _exit(3);
    }
    close(i[0]);
    close(o[1]);
    k->out = o[0];
    k->in = i[1];
    return 0;
}

/* One child's "RC1 RC2" line into the tallies. */
static void tally(const kid_t *k, int n[3])
{
    char line[64] = "";
    size_t len = 0;
    ssize_t got;
    while (!memchr(line, '\n', len) && len + 1 < sizeof line &&
           (got = read(k->out, line + len, sizeof line - 1 - len)) > 0)
        len += (size_t)got;
    line[len] = '\0';
    int rc[2] = {-1, -1};
    sscanf(line, "%d %d", &rc[0], &rc[1]);
    for (int j = 0; j < 2; j++)
        n[rc[j] == CUDA_SUCCESS ? 0 : rc[j] == CUDA_ERROR_OUT_OF_MEMORY ? 1 : 2]++;
}

static int parent(int count, const char *bytes)
{
    kid_t k[MAX_CHILDREN];
    int n[3] = {0, 0, 0};
    if (count < 1 || count > MAX_CHILDREN)
        return 2;
    for (int i = 0; i < count; i++)
        if (start(&k[i], bytes) != 0)
            return 3;
    for (int i = 0; i < count; i++)
        tally(&k[i], n);
    const char *name = getenv("VRAMGUARD_SHARED");
    char path[512];
    snprintf(path, sizeof path, "/dev/shm/vramguard.%s", name ? name : "");
    printf("ok=%d refused=%d other=%d shared=%s region=%s\n", n[0], n[1], n[2],
           name ? name : "", name && access(path, F_OK) == 0 ? "yes" : "no");
    fflush(stdout);
    for (int i = 0; i < count; i++) {
        close(k[i].in);
        close(k[i].out);
        waitpid(k[i].pid, NULL, 0);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    if (!strcmp(argv[1], "child"))
        return child(strtoull(argv[2], NULL, 10));
    return parent(atoi(argv[1]), argv[2]);
}
