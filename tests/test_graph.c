/*
 * test_graph.c — a CUDA graph's memory nodes after cuGraphDestroy, judged
 * by the test driver's own high-water mark (truthrun.h): each test runs
 * tests/clients/client_graph.c under the preload shim with a budget. The
 * test driver behaves as graph_probe measured on an H100 (driver 580.159,
 * docs/gpu-results.md): memory a launched graph left live is held after
 * the destroy until cuMemFree; the rest goes with the graph, or with the
 * executable instantiated from it when that outlives the graph.
 *
 * Needs VG_TEST_BUILD (tests/run-tests.sh exports it).
 */
#include <criterion/criterion.h>

#include <string.h>

#include "clientrun.h"
#include "testutil.h"
#include "truthrun.h"

/* Before, the destroy gave the node's 600 MiB back while the driver still
 * held them. Without NVML, 600 MiB more fitted a 1 GiB budget (the device
 * held 1.2 GiB); with it, the next measurement charged them as memory no
 * call shows, and kept them after the program's cuMemFree of the node,
 * which was reported as a bad pointer (foreign), so 600 MiB never fitted
 * again. */
Test(graph, memory_a_launch_left_live_stays_charged_until_cuMemFree)
{
    static truth_t t;
    char *no_nvml = cat3("LD_LIBRARY_PATH=", build_dir(), "/fakecuda");
    for (int i = 0; i < 2; i++) {
        run_truth_client(&t, "graph", "live", "1GiB", i ? ENV(no_nvml) : NULL);
        expect_rc(&t, "destroy_rc", 0);
        expect_rc(&t, "after_rc", OUT_OF_MEMORY);
        expect_rc(&t, "free_rc", 0);
        expect_rc(&t, "again_rc", 0);
        expect_peak_within(&t, GiB);
        cr_expect_null(strstr(t.r.err, "bad pointer"), "%s: %s", t.what, t.r.err);
    }
    free(no_nvml);
}

/* What the driver freed with the graph is no longer charged: 600 MiB fit
 * after it, under the same budget. */
Test(graph, an_unlaunched_or_freed_in_graph_node_goes_with_its_graph)
{
    static const char *const cases[] = {"unlaunched", "freed_in_graph"};
    static truth_t t;
    for (int i = 0; i < 2; i++) {
        run_truth_client(&t, "graph", cases[i], "1GiB", NULL);
        expect_rc(&t, "destroy_rc", 0);
        expect_rc(&t, "after_rc", 0);
        expect_peak_within(&t, GiB);
    }
}

/* The destroy asks the driver about each node after the driver freed it;
 * meanwhile another thread was handed the node's address and recorded its
 * own 64 MiB there. Releasing the node by address took that allocation's
 * charge: 128 MiB more fitted a 160 MiB budget and the device held
 * 192 MiB. The node's record goes by its number, so the new one stays. */
Test(graph, a_destroy_leaves_a_new_allocation_at_a_nodes_address_charged)
{
    static truth_t t;
    run_truth_client(&t, "graph", "reuse", "160MiB",
                     ENV("FAKECUDA_POINTER_ATTR_DELAY_NS=300000000"));
    expect_rc(&t, "reused", 1);
    expect_rc(&t, "destroy_rc", 0);
    expect_rc(&t, "alloc_rc", 0);
    expect_rc(&t, "more_rc", OUT_OF_MEMORY);
    expect_peak_within(&t, 160 * MiB);
}

/* The driver answers for a graph allocation either from its node's
 * creation or only once a launch mapped it (not measured on a GPU): the
 * test driver does either (FAKECUDA_GRAPH_MAPPED_AT_LAUNCH), and the shim
 * must be right both ways. */
static const char *const answers[] = {NULL, "FAKECUDA_GRAPH_MAPPED_AT_LAUNCH=1"};

/* Names the driver's way of answering, and whether NVML was there, in the
 * run's messages. */
static void say_how(truth_t *t, int mapped_at_launch, int no_nvml)
{
    size_t n = strlen(t->what);
    snprintf(t->what + n, sizeof t->what - n, " (%s%s)",
             mapped_at_launch ? "mapped at launch" : "known from creation",
             no_nvml ? ", no NVML" : "");
}

/* Runs CASE under a 1 GiB budget the way `run` names: bit 0 picks the
 * driver's answer (answers[]), bit 1 takes NVML away (no_nvml: the test
 * driver's path alone). */
static void run_way(truth_t *t, const char *c, int run, const char *no_nvml)
{
    const char *env[3] = {answers[run & 1], NULL, NULL};
    if (run & 2)
        env[!!answers[run & 1]] = no_nvml;
    run_truth_client(t, "graph", c, "1GiB", env);
    say_how(t, run & 1, run & 2);
}

/* A graph destroyed while its executable lives: the executable's launch
 * still takes the node's 600 MiB. Before, when the driver did not know
 * the unlaunched node's address at the destroy, its charge went back
 * there: without NVML 600 MiB plain fitted a 1 GiB budget after the
 * launch and the device held 1.2 GiB (with it, the next measurement
 * charged them as memory no call shows). */
Test(graph, an_executable_keeps_its_destroyed_graphs_nodes_charged)
{
    static const char *const cases[] = {"exec_freed", "exec_live"};
    static truth_t t;
    char *no_nvml = cat3("LD_LIBRARY_PATH=", build_dir(), "/fakecuda");
    for (int run = 0; run < 8; run++) {
        run_way(&t, cases[run >> 2], run, no_nvml);
        expect_rc(&t, "destroy_rc", 0);
        expect_rc(&t, "launch_rc", 0);
        expect_rc(&t, "after_rc", OUT_OF_MEMORY);
        expect_peak_within(&t, GiB);
    }
    free(no_nvml);
}

/* The executable's destroy gives the nodes it kept back. Before, when the
 * driver still knew the node's address at the graph's destroy (the
 * executable held it), the node stayed charged as an ordinary allocation
 * that no call freed, and 1 GiB never fitted the 1 GiB budget again. Every
 * way of instantiating is seen. */
Test(graph, an_executables_destroy_gives_its_graphs_nodes_back)
{
    static const char *const cases[] = {"exec_freed",           "exec_via_params",
                                        "exec_via_params_ptsz", "exec_via_legacy",
                                        "exec_via_legacy_v2"};
    static truth_t t;
    for (int a = 0; a < 2; a++) {
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
            run_truth_client(&t, "graph", cases[i], "1GiB", ENV(answers[a]));
            say_how(&t, a, 0);
            expect_rc(&t, "exec_rc", 0);
            expect_rc(&t, "again_rc", 0);
            expect_peak_within(&t, GiB);
        }
    }
}

/* Memory the executable's launch left live outlives the executable too:
 * charged until the program's cuMemFree of it, then gone. */
Test(graph, memory_an_executable_left_live_stays_charged_until_cuMemFree)
{
    static truth_t t;
    for (int a = 0; a < 2; a++) {
        run_truth_client(&t, "graph", "exec_live", "1GiB", ENV(answers[a]));
        say_how(&t, a, 0);
        expect_rc(&t, "exec_rc", 0);
        expect_rc(&t, "held_rc", OUT_OF_MEMORY);
        expect_rc(&t, "free_rc", 0);
        expect_rc(&t, "again_rc", 0);
        expect_peak_within(&t, GiB);
        cr_expect_null(strstr(t.r.err, "bad pointer"), "%s: %s", t.what, t.r.err);
    }
}

/* A child graph moved into its parent has no cuGraphDestroy of its own:
 * the driver destroys it with the parent. Before, its node stayed charged
 * until the process ended, and 1 GiB never fitted the 1 GiB budget after
 * the parent's destroy. Memory a launch left live in it is charged until
 * the program's cuMemFree, as any graph's. */
Test(graph, a_moved_child_graphs_nodes_go_with_its_parent)
{
    static truth_t t;
    for (int a = 0; a < 2; a++) {
        run_truth_client(&t, "graph", "child", "1GiB", ENV(answers[a]));
        say_how(&t, a, 0);
        expect_rc(&t, "moved_rc", 0);
        expect_rc(&t, "destroy_rc", 0);
        expect_rc(&t, "again_rc", 0);
        expect_peak_within(&t, GiB);
        run_truth_client(&t, "graph", "child_live", "1GiB", ENV(answers[a]));
        say_how(&t, a, 0);
        expect_rc(&t, "held_rc", OUT_OF_MEMORY);
        expect_rc(&t, "free_rc", 0);
        expect_rc(&t, "again_rc", 0);
        expect_peak_within(&t, GiB);
    }
}

/* Memory a launch left live, freed by the program outside the graph while
 * the graph (or, refree_exec, its executable) lives: CUDA requires that
 * free before the next launch, which allocates the memory again at the
 * same address. Before, the free gave the node's charge back and the next
 * launch took the 600 MiB uncharged: without NVML 600 MiB plain then
 * fitted the 1 GiB budget and the device held 1.2 GiB; with it, the next
 * measurement charged them as memory no call shows, the program's last
 * cuMemFree of the address was reported as a bad pointer (foreign), and
 * that charge stayed. The node's charge stays across the free. */
Test(graph, a_node_freed_outside_its_graph_stays_charged_for_the_next_launch)
{
    static const char *const cases[] = {"refree", "refree_exec"};
    static truth_t t;
    char *no_nvml = cat3("LD_LIBRARY_PATH=", build_dir(), "/fakecuda");
    for (int run = 0; run < 8; run++) {
        run_way(&t, cases[run >> 2], run, no_nvml);
        expect_rc(&t, "free_rc", 0);
        expect_rc(&t, "relaunch_rc", 0);
        expect_rc(&t, "after_rc", OUT_OF_MEMORY);
        expect_peak_within(&t, GiB);
        cr_expect_null(strstr(t.r.err, "bad pointer"), "%s: %s", t.what, t.r.err);
    }
    free(no_nvml);
}

/* The charge a free outside the graph kept goes back with the graph and
 * its executable: at their destroy when the memory was freed before it
 * (refree), at the program's cuMemFree when the last launch left it live
 * past the destroy (refree_exec). 1 GiB fits the 1 GiB budget again. */
Test(graph, a_node_freed_outside_its_graph_is_given_back_after_the_destroy)
{
    static const char *const cases[] = {"refree", "refree_exec"};
    static truth_t t;
    for (int run = 0; run < 4; run++) {
        run_way(&t, cases[run >> 1], run & 1, NULL);
        expect_rc(&t, "last_free_rc", 0);
        expect_rc(&t, "exec_rc", 0);
        expect_rc(&t, "destroy_rc", 0);
        expect_rc(&t, "again_rc", 0);
        expect_peak_within(&t, GiB);
    }
}

/* Lines of `text` that hold each of `a`, `b` and `c`. */
static int lines_with(const char *text, const char *a, const char *b, const char *c)
{
    int n = 0;
    for (const char *l = text, *nl; *l; l = nl + 1) {
        nl = strchrnul(l, '\n');
        char line[1024];
        snprintf(line, sizeof line, "%.*s", (int)(nl - l), l);
        n += strstr(line, a) && strstr(line, b) && strstr(line, c);
        if (!*nl)
            break;
    }
    return n;
}

/* A free outside the graph that kept the node's charge is still a `free`
 * line of the audit log: refree frees the node's address twice
 * (cuMemFree_v2), then its graph's destroy gives the charge back (a
 * cuGraphDestroy line for the same address). Before, the second free was a
 * `bad_ptr` line and the destroy wrote none. */
Test(graph, a_free_outside_the_graph_is_still_an_audit_free_line)
{
    static truth_t t;
    char log[64];
    snprintf(log, sizeof log, "/tmp/vg-graph-audit-XXXXXX");
    int fd = mkstemp(log);
    cr_assert_geq(fd, 0);
    close(fd);
    unlink(log); /* the shim creates it */
    char *audit = cat3("VRAMGUARD_AUDIT=", log, "");
    run_truth_client(&t, "graph", "refree", "1GiB", ENV(audit));
    char *text = read_whole_file(log);
    unlink(log);
    free(audit);
    const char *destroy = strstr(text, "\"api\":\"cuGraphDestroy\"");
    cr_assert_not_null(destroy, "no free line of cuGraphDestroy:\n%s", text);
    const char *ptr = strstr(destroy, "\"ptr\":");
    cr_assert_not_null(ptr);
    char node[64];
    snprintf(node, sizeof node, "%.*s", (int)strcspn(ptr, ","), ptr);
    cr_expect_eq(lines_with(text, "\"op\":\"free\"", "\"api\":\"cuMemFree_v2\"", node), 2,
                 "%s:\n%s", node, text);
    cr_expect_null(strstr(text, "\"op\":\"bad_ptr\""), "%s", text);
    free(text);
}
