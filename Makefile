# Makefile — builds libiteralign.a, the `iteralign` binary, the tests, the fuzzers and benchmarks.
#   make            the binary (./iteralign)
#   make test       build and run the whole test suite
#   make check      make test, then make test-asan (what CI runs)
#   make test-asan  the same suite under AddressSanitizer + UndefinedBehaviorSanitizer
#   make fuzz       build the libFuzzer targets (clang) ; make fuzz-run runs each for a bounded time
#   make bench      benchmarks (writes bench/results/)

CC      ?= cc
BUILD   ?= build
OPT     ?= -O2
CFLAGS  ?= $(OPT) -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -Wshadow -fopenmp -pthread \
           -Iinclude -Isrc $(EXTRA_CFLAGS)
LDLIBS  += -lpcre2-8 -ljansson -lcurl -lmicrohttpd -lsqlite3 -lm -fopenmp -pthread

LIB_SRC := $(sort $(wildcard src/*/*.c))
LIB_SRC := $(filter-out src/cli/%,$(LIB_SRC))
CLI_SRC := $(sort $(wildcard src/cli/*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/%.o)
LIB     := $(BUILD)/libiteralign.a
BIN     ?= iteralign

TEST_SRC := $(sort $(wildcard tests/test_*.c))
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)

FUZZ_SRC := $(sort $(wildcard tests/fuzz/fuzz_*.c))

.PHONY: all test check test-asan fuzz fuzz-run bench clean install-deps
all: $(BIN)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

# The kernels: -O3 unrolls their small fixed-size tile loops completely, so the accumulator arrays
# live in registers (at -O2 GCC keeps them on the stack: a load and a store around every vpdpbusd).
KERNEL_OPT ?= -O3
$(BUILD)/src/tensor/%.o: CFLAGS += $(KERNEL_OPT)

$(LIB): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BIN): $(CLI_OBJ) $(LIB)
	$(CC) $(CFLAGS) -o $@ $(CLI_OBJ) $(LIB) $(LDLIBS)

$(BUILD)/tests/%: tests/%.c tests/test_util.h $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -o $@ $< $(LIB) $(LDLIBS) -lcmocka

tests-build: $(BIN) $(TEST_BIN)

# The README's test command. Runs every unit test binary, the CLI/reference tests and bounded fuzzing.
test: $(BIN) $(TEST_BIN)
	@BUILD=$(BUILD) BIN=./$(BIN) tests/run-tests.sh

# What CI runs (the README's test command): the suite, then the suite again under ASan+UBSan.
check:
	$(MAKE) test
	IA_TEST_FUZZ_SECONDS=0 $(MAKE) test-asan

test-asan:
	$(MAKE) BUILD=build-asan BIN=iteralign-asan OPT=-O1 \
	  EXTRA_CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
	  LDLIBS_EXTRA= test

FUZZ_CFLAGS = -O1 -g -std=c11 -D_GNU_SOURCE -Iinclude -Isrc -fsanitize=fuzzer,address,undefined -fopenmp
fuzz: $(FUZZ_SRC:tests/fuzz/%.c=$(BUILD)/fuzz/%)
$(BUILD)/fuzz/%: tests/fuzz/%.c $(LIB_SRC)
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -o $@ $< $(LIB_SRC) -lpcre2-8 -ljansson -lcurl -lmicrohttpd -lsqlite3 -lm

fuzz-run: fuzz
	IA_TEST_FUZZ_SECONDS=$${IA_TEST_FUZZ_SECONDS:-60} BUILD=$(BUILD) bash tests/t_fuzz.sh

bench: $(BIN)
	@bench/run-bench.sh

install-deps:
	scripts/install-deps.sh

clean:
	rm -rf build build-asan $(BIN) iteralign-asan

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d)
