/*
 * client_nvml_fork.c — a fork while another thread is inside the shim's
 * first NVML resolution, for tests/test_nvml.c (run under the preload shim,
 * with the NVML test double on the library path and FAKENVML_LOAD_DELAY_NS
 * set).
 *
 *   client_nvml_fork
 *   stdout: "path=nvml_fork child_status=S" (S: waitpid's status, -1 when
 *           the child had to be killed after 10 s)
 *   exit:   0 ran, 3 setup failed
 *
 * How the window is held open: thread A loads NVML, whose constructor
 * waits (glibc runs constructors holding the dynamic loader's lock);
 * thread B then makes the process's first NVML memory call, so the shim
 * resolves NVML under its own lock and waits in dlopen for the loader;
 * the main thread forks meanwhile. The child's first NVML memory call
 * needs that lock: left held by a thread the child does not have, it
 * waits for ever (alarm() ends it).
 */
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct { unsigned long long total, free, used; } mem_t;
typedef int (*mem_fn)(void *device, mem_t *m);

static mem_fn g_get;

static void sleep_ms(long ms)
{
    nanosleep(&(struct timespec){ms / 1000, (ms % 1000) * 1000000}, NULL);
}

static atomic_int g_loading, g_go, g_forked;

/* Alive until fork has returned: a thread that ended unjoined before the
 * fork would be reported as leaked by the child under ThreadSanitizer. */
static void until_forked(void)
{
    while (!atomic_load(&g_forked))
        sleep_ms(1);
}

static void *loader(void *arg)
{
    (void)arg;
    atomic_store(&g_loading, 1);
    void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    until_forked();
    return h;
}

/* The process's first NVML memory call (the device does not matter: the
 * shim resolves NVML before it looks at it). */
static void *first_call(void *arg)
{
    mem_t m;
    (void)arg;
    while (!atomic_load(&g_go))
        sleep_ms(1);
    g_get(NULL, &m);
    until_forked();
    return NULL;
}

static int wait_bounded(pid_t pid)
{
    for (int i = 0; i < 1000; i++) {
        int status = 0;
        if (waitpid(pid, &status, WNOHANG) == pid)
            return status;
        sleep_ms(10);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

int main(void)
{
    pthread_t a, b;
    /* The shim's hook, found before NVML is in the process: the shim
     * cannot resolve NVML yet, so the first call will. */
    g_get = (mem_fn)dlsym(RTLD_DEFAULT, "nvmlDeviceGetMemoryInfo");
    if (!g_get || pthread_create(&b, NULL, first_call, NULL) ||
        pthread_create(&a, NULL, loader, NULL)) {
        fprintf(stderr, "client_nvml_fork: setup failed\n");
        return 3;
    }
    while (!atomic_load(&g_loading))
        sleep_ms(1);
    sleep_ms(50); /* A is in NVML's constructor */
    atomic_store(&g_go, 1);
    sleep_ms(50); /* B holds the shim's lock, waiting in dlopen */
    pid_t pid = fork();
    if (pid == 0) {
        mem_t m;
        alarm(3);
        g_get(NULL, &m);
        _exit(0);
    }
    atomic_store(&g_forked, 1);
    int status = pid < 0 ? -1 : wait_bounded(pid);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    printf("path=nvml_fork child_status=%d\n", status);
    return 0;
}
