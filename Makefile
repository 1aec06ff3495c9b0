# vramguard — plain GNU make. `make` builds, `make test` builds and runs every test.
#
#   make test SAN=address,undefined   the suite under ASan + UBSan (own build folder)
#   make test SAN=thread              the suite under TSan
#   make bench                        benchmarks (ns per operation, median and spread)
#   make gpu-test                     on a machine with an NVIDIA GPU (builds nothing)
#   make install PREFIX=/usr/local DESTDIR=
#
# `make test` also runs the C++ binding's tests (tests/cpp) and the Rust
# crate's (bindings/rust, through cargo, offline) and ends with a summary.
#
# Everything is written under $(BUILD) (build/, or build/san-<list> with SAN).

CUDA_HOME ?= /usr/local/cuda
PREFIX    ?= /usr/local
DESTDIR   ?=
CC        ?= cc
CXX       ?= g++
SAN       ?=

# The version is written once, in include/vramguard.h.
VERSION := $(shell sed -n 's/^\#define VG_VERSION_[A-Z]* //p' include/vramguard.h | paste -sd.)
SONAME  := libvramguard.so.0

# Sanitizer builds also check the lock order (VG_LOCK_DEBUG, lib/fork.c):
# a lock taken while one of its rank or above is held aborts, naming both.
ifeq ($(SAN),)
BUILD ?= build
SANFLAGS :=
CHECKS :=
else
BUILD ?= build/san-$(subst $(comma),-,$(SAN))
SANFLAGS := -fsanitize=$(SAN) -fno-omit-frame-pointer -fno-sanitize-recover=all
CHECKS := -DVG_LOCK_DEBUG
endif
comma := ,

OPT      ?= -O2 -g
WARN     := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes
CPPFLAGS := -D_GNU_SOURCE -Iinclude -Ilib -I$(CUDA_HOME)/include $(CHECKS)
CFLAGS   := -std=c11 $(OPT) $(WARN) -fPIC $(SANFLAGS) $(EXTRA_CFLAGS)
LDFLAGS  := $(SANFLAGS)
LIBS     := -ldl -lpthread
# The C++ binding (include/vramguard.hpp) and its tests: C++17, same warnings.
CXXFLAGS_VG := -std=c++17 $(OPT) -Wall -Wextra -Werror -Wshadow $(SANFLAGS) $(EXTRA_CXXFLAGS)

# Criterion cannot start under TSan (Snaipe/Criterion#274, "Could not
# initialize inheritable arena"), so the TSan suite runs on a small
# criterion-compatible harness: same test sources, one process per test.
ifneq ($(findstring thread,$(SAN)),)
TEST_INC   := -Itests/criterion-compat
TEST_RUNNER:= $(BUILD)/obj/tests/criterion-compat/runner.o
TEST_LIBS  := $(TEST_RUNNER)
else
TEST_INC   :=
TEST_RUNNER:=
TEST_LIBS  := -lcriterion
endif

LIB_SRCS   := $(wildcard lib/*.c)
LIB_OBJS   := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)
SHIM_SRCS  := $(wildcard shim/*.c)
SHIM_OBJS  := $(SHIM_SRCS:%.c=$(BUILD)/obj/%.o)
CLI_SRCS   := $(wildcard tools/cli*.c)
CLI_OBJS   := $(CLI_SRCS:%.c=$(BUILD)/obj/%.o)
FAKE_SRCS  := $(wildcard tests/fakecuda/*.c)
FAKENVML_SRCS := $(wildcard tests/fakenvml/*.c)
TEST_SRCS  := $(wildcard tests/test_*.c)
# test_hostmem replaces calloc and malloc, which a sanitizer's allocator owns:
# plain builds only.
ifneq ($(SAN),)
TEST_SRCS  := $(filter-out tests/test_hostmem.c,$(TEST_SRCS))
endif
TESTS      := $(TEST_SRCS:tests/%.c=$(BUILD)/tests/%)
EXAMPLE_SRCS:= $(wildcard tests/examples/*.c)
EXAMPLES   := $(EXAMPLE_SRCS:tests/examples/%.c=$(BUILD)/examples/%)
CLIENT_SRCS:= $(wildcard tests/clients/*.c)
CLIENTS    := $(CLIENT_SRCS:tests/clients/%.c=$(BUILD)/clients/%)
INTERPOSE_SRCS := $(wildcard tests/interpose/*.c)
INTERPOSERS:= $(INTERPOSE_SRCS:tests/interpose/%.c=$(BUILD)/interpose/%.so)
CXX_TEST_SRCS := $(wildcard tests/cpp/test_*.cpp)
CXX_TESTS  := $(CXX_TEST_SRCS:tests/cpp/%.cpp=$(BUILD)/tests/cpp/%)
CXX_PROGS  := $(CXX_TESTS) $(BUILD)/tests/cpp/contract

LIB_SO     := $(BUILD)/libvramguard.so
LIB_A      := $(BUILD)/libvramguard.a
FAKECUDA   := $(BUILD)/fakecuda/libcuda.so.1
FAKENVML   := $(BUILD)/fakenvml/libnvidia-ml.so.1
NULLDRV    := $(BUILD)/nulldriver/libcuda.so.1
BENCH_PAIRS:= $(BUILD)/bench_pairs
NVML_CLIENT:= $(BUILD)/clients/nvml_client
PRELOAD    := $(if $(SHIM_SRCS),$(BUILD)/libvramguard-preload.so)
CLI        := $(if $(CLI_SRCS),$(BUILD)/vramguard)
BENCH      := $(BUILD)/vg-bench

.PHONY: all build-deps test fuzz check-deps gpu-test bench install uninstall clean FORCE
all: build-deps
	@$(MAKE) --no-print-directory $(LIB_SO) $(LIB_A) $(FAKECUDA) $(PRELOAD) $(CLI) $(ALLOC_EXAMPLE) \
	  $(MANPAGE)

# What `make` alone needs (uthash and the CUDA headers): checked first, so a
# missing one is the apt-get line to run, not a compiler error.
build-deps:
	@test -f /usr/include/uthash.h || { \
	  echo "missing build dependency; run: sudo apt-get install -y uthash-dev"; exit 1; }
	@test -f $(CUDA_HOME)/include/cuda.h || { \
	  echo "no cuda.h under CUDA_HOME=$(CUDA_HOME); install the CUDA toolkit headers or set CUDA_HOME"; exit 1; }

# The manual page: vramguard.1.in with its SETTINGS section generated from
# the settings table by the CLI itself, so the two cannot disagree.
MANPAGE := $(if $(CLI),$(BUILD)/vramguard.1)
$(BUILD)/vramguard.1: vramguard.1.in $(CLI)
	$(if $(findstring thread,$(SAN)),setarch $$(uname -m) -R) $(CLI) __man-settings > $@.settings
	sed -e 's/@VERSION@/$(VERSION)/' -e '/@SETTINGS@/{r $@.settings' -e 'd;}' $< > $@
	rm -f $@.settings

# The README's C example (examples/): allocates until the budget refuses.
ALLOC_EXAMPLE := $(BUILD)/alloc-until-refused
$(ALLOC_EXAMPLE): examples/alloc_until_refused.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(LDFLAGS) -ldl -o $@

# Each object depends on the headers it includes, as the compiler lists them
# (-MMD -MP: a .d beside the object), so touching a CLI header rebuilds only
# the CLI.
$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -fvisibility=hidden -c $< -o $@

-include $(LIB_OBJS:.o=.d) $(SHIM_OBJS:.o=.d) $(CLI_OBJS:.o=.d)

$(LIB_SO): $(LIB_OBJS)
	$(CC) -shared $(LDFLAGS) -Wl,-soname,$(SONAME) -Wl,--no-undefined $^ $(LIBS) -o $@
	ln -sf libvramguard.so $(BUILD)/$(SONAME)

$(LIB_A): $(LIB_OBJS)
	rm -f $@ && ar rcs $@ $^

# The preload shim holds its own copy of the engine (one engine per process:
# it also exports the public API, so a program that links libvramguard.so and
# is preloaded reaches the shim's engine through both doors).
$(BUILD)/libvramguard-preload.so: $(SHIM_OBJS) $(LIB_OBJS) $(wildcard shim/*.map)
	$(CC) -shared $(LDFLAGS) -Wl,-soname,libvramguard-preload.so -Wl,--no-undefined \
	  $(addprefix -Wl$(comma)--version-script=,$(wildcard shim/*.map)) \
	  $(SHIM_OBJS) $(LIB_OBJS) $(LIBS) -o $@

# The CLI looks for the shim in $(PREFIX)/lib after its own folder. cli.c
# holds that path, so it is rebuilt when PREFIX changes (`make` then
# `make install PREFIX=/usr`): the stamp is rewritten only when it differs.
$(CLI_OBJS): CPPFLAGS += -DVG_PREFIX='"$(PREFIX)"'
$(BUILD)/obj/tools/cli.o: $(BUILD)/prefix.stamp
$(BUILD)/prefix.stamp: FORCE
	@mkdir -p $(dir $@)
	@test "$$(cat $@ 2>/dev/null)" = '$(PREFIX)' || printf '%s\n' '$(PREFIX)' > $@
FORCE:

$(BUILD)/vramguard: $(CLI_OBJS) $(LIB_A)
	$(CC) $(LDFLAGS) $^ $(LIBS) -lm -o $@

# The test driver: tests only, never installed, never linked by product code.
$(FAKECUDA): $(FAKE_SRCS) $(wildcard tests/fakecuda/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -fvisibility=default -shared $(FAKE_SRCS) \
	  -Wl,-soname,libcuda.so.1 -Wl,-Bsymbolic-functions $(LDFLAGS) -lpthread -o $@

# The null driver: benchmarks only (the shim's own cost, nothing in the way).
$(NULLDRV): tests/nulldriver/nulldriver.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -fvisibility=default -shared $< \
	  -Wl,-soname,libcuda.so.1 $(LDFLAGS) -o $@

# The NVML test double, beside it (tests only, like the test driver).
$(FAKENVML): $(FAKENVML_SRCS) $(wildcard tests/fakenvml/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -fvisibility=default -shared $(FAKENVML_SRCS) \
	  -Wl,-soname,libnvidia-ml.so.1 $(LDFLAGS) -ldl -lpthread -o $@

# Unit tests link the engine statically so they can call vg__ internals.
$(BUILD)/obj/tests/criterion-compat/runner.o: tests/criterion-compat/runner.c $(wildcard tests/criterion-compat/criterion/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(TEST_INC) $(CFLAGS) -c $< -o $@

# The test driver's own tests (test_fakecuda*.c) link the driver, not the engine;
# its NVML figure's test loads the NVML double at run time.
FAKECUDA_TESTS := $(filter $(BUILD)/tests/test_fakecuda%,$(TESTS))
$(FAKECUDA_TESTS): $(BUILD)/tests/%: tests/%.c $(FAKECUDA) $(TEST_RUNNER) $(wildcard tests/*.h) \
    | $(FAKENVML)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(TEST_INC) -Itests $(CFLAGS) $< -L$(BUILD)/fakecuda -l:libcuda.so.1 \
	  -Wl,-rpath,'$$ORIGIN/../fakecuda' $(LDFLAGS) $(TEST_LIBS) $(LIBS) -o $@

$(BUILD)/tests/%: tests/%.c $(LIB_A) $(TEST_RUNNER) $(wildcard tests/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(TEST_INC) -Itests -Ishim $(CFLAGS) $< $(LIB_A) $(LDFLAGS) $(TEST_LIBS) $(LIBS) -lm -o $@

# The C++ binding's tests and the README's contract program link the shared
# library, as a C++ program does; test_hpp_noexcept is built without
# exceptions (its static_asserts check that it is).
$(BUILD)/tests/cpp/%: tests/cpp/%.cpp include/vramguard.hpp include/vramguard.h \
    tests/cpp/cxxtest.hpp tests/testutil.h $(LIB_SO)
	@mkdir -p $(dir $@)
	$(CXX) -Iinclude -Itests $(CXXFLAGS_VG) $(CXXFLAGS_TEST) $< -L$(BUILD) -lvramguard \
	  -Wl,-rpath,'$$ORIGIN/../..' $(LDFLAGS) $(LIBS) -o $@
$(BUILD)/tests/cpp/test_hpp_noexcept: CXXFLAGS_TEST := -fno-exceptions

# Client programs reach the driver the ways real programs do.
$(BUILD)/clients/%: tests/clients/%.c $(wildcard tests/clients/*.h) $(FAKECUDA)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) -Itests $(CFLAGS) $< -L$(BUILD)/fakecuda -l:libcuda.so.1 \
	  $(LDFLAGS) $(LIBS) -o $@

# Test-only interposers a test preloads into the program it runs.
$(BUILD)/interpose/%.so: tests/interpose/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -shared $< $(LDFLAGS) -o $@

# Reaches NVML and the driver through dlopen only, so it also runs where
# there is no NVML at all (tests/test_nvml.c).
$(NVML_CLIENT): tests/nvml_client.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $< $(LDFLAGS) -ldl -o $@

# Fuzz targets: libFuzzer entry points driven by a small standalone loop, so
# CI needs no libFuzzer; each runs for FUZZ_SECONDS inside `make test`, and
# for FUZZ_RUNS inputs each in `make fuzz` (nightly; with SAN= as well).
FUZZ_SECONDS ?= 5
FUZZ_RUNS ?= 10000000
FUZZERS := $(patsubst tests/fuzz/%.c,$(BUILD)/fuzz/%,$(filter-out tests/fuzz/fuzz_main.c,$(wildcard tests/fuzz/*.c)))
$(BUILD)/fuzz/%: tests/fuzz/%.c tests/fuzz/fuzz_main.c $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $^ $(LDFLAGS) $(LIBS) -lm -o $@

# Example programs (docs/pool.md): the model-slot eviction example runs in
# `make test`; pool_bench is a benchmark.
$(BUILD)/examples/%: tests/examples/%.c $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $< $(LIB_A) $(LDFLAGS) $(LIBS) -lm -o $@

# The audit reader lives in tools/; its fuzz target links it.
$(BUILD)/fuzz/fuzz_audit_reader: tools/cli_audit_parse.c

$(BENCH): tools/bench.c $(LIB_A) $(FAKECUDA)
	$(CC) $(CPPFLAGS) $(CFLAGS) $< $(LIB_A) $(LDFLAGS) $(LIBS) -lm -o $@

# tests/gpu/bench_pairs, linked against the null driver (no rpath): runs
# over whichever libcuda.so.1 LD_LIBRARY_PATH names.
$(BENCH_PAIRS): tests/gpu/bench_pairs.c tests/gpu/gpu_common.h $(NULLDRV)
	$(CC) $(CPPFLAGS) -Itests/gpu $(CFLAGS) $< -L$(BUILD)/nulldriver -l:libcuda.so.1 \
	  $(LDFLAGS) -lpthread -o $@

# Debian packages the build needs; installed when root, else one line to run.
DEPS_CHECK := { test -f /usr/include/uthash.h && test -f /usr/include/criterion/criterion.h; }
check-deps:
	@if ! $(DEPS_CHECK); then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing uthash-dev libcriterion-dev"; \
	    apt-get update -qq && apt-get install -y -qq uthash-dev libcriterion-dev >/dev/null; \
	  else \
	    echo "missing build dependencies; run: sudo apt-get install -y uthash-dev libcriterion-dev"; exit 1; \
	  fi; \
	fi
	@test -f $(CUDA_HOME)/include/cuda.h || { echo "no cuda.h under CUDA_HOME=$(CUDA_HOME); set CUDA_HOME"; exit 1; }

# Each test binary runs with the test driver first on the library path.
# TSan needs ASLR off on some kernels (setarch -R); it is harmless elsewhere.
# Every suite runs even when one fails; each adds its closing line to
# $(BUILD)/summary, printed last. The Rust crate's tests run in the plain
# build only: cargo builds its own code without the sanitizers, and a
# sanitized libvramguard.so cannot be loaded by an unsanitized test binary;
# the C++ tests do run under every SAN.
test: check-deps
	@$(MAKE) --no-print-directory all $(TESTS) $(CLIENTS) $(INTERPOSERS) $(FAKENVML) $(NVML_CLIENT) $(FUZZERS) $(EXAMPLES) $(CXX_PROGS)
	@for f in $(FUZZERS); do $$f $(FUZZ_SECONDS) || exit 1; done
	@echo "example: model_slots (13 models in an 8 GiB pool, evicted under pressure)"
	@LD_LIBRARY_PATH=$(BUILD)/fakecuda $(BUILD)/examples/model_slots >/dev/null
	@rm -f $(BUILD)/summary; rc=0; \
	  BUILD=$(BUILD) SAN=$(SAN) SUITE="c tests" SUMMARY=$(BUILD)/summary tests/run-tests.sh $(TESTS) || rc=1; \
	  CXX="$(CXX)" CXXFLAGS="-Iinclude $(CXXFLAGS_VG)" SUMMARY=$(BUILD)/summary \
	    tests/cpp/compile-fail.sh $(wildcard tests/cpp/compile_fail/*.cpp) || rc=1; \
	  BUILD=$(BUILD) SAN=$(SAN) SUITE="c++ tests" SUMMARY=$(BUILD)/summary tests/run-tests.sh $(CXX_TESTS) || rc=1; \
	  if [ -z "$(SAN)" ]; then \
	    BUILD=$(BUILD) SUMMARY=$(BUILD)/summary tests/run-cargo.sh || rc=1; \
	  else \
	    echo "rust tests: not run under SAN=$(SAN) (the plain make test runs them)" >>$(BUILD)/summary; \
	  fi; \
	  echo "== summary ($(BUILD))"; cat $(BUILD)/summary; \
	  if [ $$rc = 0 ]; then echo "make test: PASS"; else echo "make test: FAIL"; fi; \
	  sed -n 's/.*: \([0-9]*\) passed, \([0-9]*\) failed.*/\1 \2/p' $(BUILD)/summary | \
	    awk '{p += $$1; f += $$2} END {printf "tests: %d passed, %d failed\n", p, f}'; exit $$rc

# The nightly fuzz run: FUZZ_RUNS inputs per target, a fresh seed each night
# (printed first, to replay a failure: build/fuzz/TARGET 0 SEED RUNS).
fuzz: check-deps
	@$(MAKE) --no-print-directory $(FUZZERS)
	@seed=$$(date +%s); for f in $(FUZZERS); do echo "$$f"; $$f 0 $$seed $(FUZZ_RUNS) || exit 1; done

# The budget and the shim (run.sh), the audit log, bad pointers and shared
# budgets (run_audit_shared.sh), the pool and cache mode (run_pool.sh), the
# truthful budget judged from outside (run_truth.sh), the C++ and Rust
# bindings (bindings.sh): each script prints its own table; the target fails
# if any of them failed.
gpu-test:
	@rc=0; for s in run.sh run_audit_shared.sh run_pool.sh run_truth.sh bindings.sh; do \
	    bash tests/gpu/$$s $(BUILD) || rc=1; done; exit $$rc

bench: check-deps
	@$(MAKE) --no-print-directory OPT="-O2 -g -DNDEBUG" $(BENCH) $(FAKECUDA) $(PRELOAD) $(BENCH_PAIRS)
	@LD_LIBRARY_PATH=$(BUILD)/fakecuda $(BENCH)
	@LD_LIBRARY_PATH=$(BUILD)/nulldriver $(BENCH_PAIRS) --hooked --preload $(PRELOAD) | grep -a '^RESULT|'
	@# again with the driver's use of the caches modelled (docs/benchmarks.md, "Code layout")
	@NULLDRIVER_CODE=65536 NULLDRIVER_FOOTPRINT=65536 LD_LIBRARY_PATH=$(BUILD)/nulldriver \
	  $(BENCH_PAIRS) --hooked --preload $(PRELOAD) --rounds 11 --threads 1 --pairs 100000 \
	  | grep -a '^RESULT|' | sed 's/^RESULT|bench_/RESULT|bench_cold_/'

vramguard.pc: Makefile
	@printf 'prefix=%s\nlibdir=$${prefix}/lib\nincludedir=$${prefix}/include\n\nName: vramguard\nDescription: VRAM budgets for CUDA processes\nVersion: %s\nLibs: -L$${libdir} -lvramguard\nLibs.private: -ldl -lpthread\nCflags: -I$${includedir}\n' \
	  '$(PREFIX)' '$(VERSION)' > $(BUILD)/vramguard.pc

install: all vramguard.pc
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include \
	  $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/bin
	install -m 0644 include/vramguard.h include/vramguard.hpp $(DESTDIR)$(PREFIX)/include/
	install -m 0755 $(LIB_SO) $(DESTDIR)$(PREFIX)/lib/libvramguard.so.$(VERSION)
	ln -sf libvramguard.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(PREFIX)/lib/libvramguard.so
	install -m 0644 $(LIB_A) $(DESTDIR)$(PREFIX)/lib/
	install -m 0644 $(BUILD)/vramguard.pc $(DESTDIR)$(PREFIX)/lib/pkgconfig/
	$(if $(PRELOAD),install -m 0755 $(PRELOAD) $(DESTDIR)$(PREFIX)/lib/)
	$(if $(CLI),install -m 0755 $(CLI) $(DESTDIR)$(PREFIX)/bin/)
	$(if $(CLI),install -d $(DESTDIR)$(PREFIX)/share/man/man1 \
	  $(DESTDIR)$(PREFIX)/share/bash-completion/completions)
	$(if $(CLI),install -m 0644 $(MANPAGE) $(DESTDIR)$(PREFIX)/share/man/man1/)
	$(if $(CLI),install -m 0644 completion/vramguard.bash \
	  $(DESTDIR)$(PREFIX)/share/bash-completion/completions/vramguard)

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/include/vramguard.h $(DESTDIR)$(PREFIX)/include/vramguard.hpp \
	  $(DESTDIR)$(PREFIX)/lib/libvramguard.* \
	  $(DESTDIR)$(PREFIX)/lib/libvramguard-preload.so $(DESTDIR)$(PREFIX)/lib/pkgconfig/vramguard.pc \
	  $(DESTDIR)$(PREFIX)/bin/vramguard $(DESTDIR)$(PREFIX)/share/man/man1/vramguard.1 \
	  $(DESTDIR)$(PREFIX)/share/bash-completion/completions/vramguard

clean:
	rm -rf build
