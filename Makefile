# pyaccel -- build, test, benchmark, install.
#   make            build libpyaccel (driver/build/) and the extension in place
#   make test       C tests, then pytest (what CI runs)
#   make sanitize   C tests under AddressSanitizer + UndefinedBehaviorSanitizer
#   make bench      the benchmark (figures next to same-run baselines)
#   sudo make install [PREFIX=/usr/local] [DESTDIR=] [HUGEPAGES=N HUGEPAGESZ=2M]

PYTHON ?= python3
CC ?= cc
PREFIX ?= /usr/local

VERSION := 0.1.0
SOMAJOR := 0
BUILD := driver/build
SRCS := $(sort $(wildcard driver/src/*.c))
HDRS := driver/include/pyaccel.h $(wildcard driver/src/*.h)
OBJS := $(SRCS:driver/src/%.c=$(BUILD)/obj/%.o)
SOLIB := $(BUILD)/libpyaccel.so.$(VERSION)
ALIB := $(BUILD)/libpyaccel.a

WARN := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes
CFLAGS_PA := -std=c11 -D_GNU_SOURCE -O2 -g -fPIC -fvisibility=hidden \
	-Idriver/include $(WARN) $(CFLAGS)
LDLIBS_PA := -lpthread

CTESTS_SRC := $(sort $(wildcard tests/c/test_*.c))
CTESTS := $(CTESTS_SRC:tests/c/%.c=$(BUILD)/tests/%)
SAN := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
SAN_OBJS := $(SRCS:driver/src/%.c=$(BUILD)/san/obj/%.o)
SAN_TESTS := $(CTESTS_SRC:tests/c/%.c=$(BUILD)/san/tests/%)

.SECONDARY:
.PHONY: all lib ext deps demo test test-c test-py sanitize bench lint clean install uninstall

all: lib ext

# Python packages the build, tests and benchmark need (once per requirements change)
DEPS_STAMP := $(BUILD)/.deps-$(shell $(PYTHON) -c "import sys; print('%d.%d' % sys.version_info[:2])")
deps: $(DEPS_STAMP)

$(DEPS_STAMP): requirements-dev.txt
	$(PYTHON) -m pip install -q -r requirements-dev.txt
	@mkdir -p $(BUILD) && touch $@

# The main job on the embedded tmpfs default: stream a sample model into the
# default pool, attach from a second process, run inference, show the timings.
demo: deps all
	$(PYTHON) scripts/demo $(DEMO_ARGS)

lib: $(SOLIB) $(ALIB)

$(BUILD)/obj/%.o: driver/src/%.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_PA) -c $< -o $@

$(SOLIB): $(OBJS) driver/libpyaccel.map
	$(CC) -shared -Wl,-soname,libpyaccel.so.$(SOMAJOR) \
		-Wl,--version-script=driver/libpyaccel.map -o $@ $(OBJS) $(LDLIBS_PA)
	ln -sf libpyaccel.so.$(VERSION) $(BUILD)/libpyaccel.so.$(SOMAJOR)
	ln -sf libpyaccel.so.$(SOMAJOR) $(BUILD)/libpyaccel.so

$(ALIB): $(OBJS)
	rm -f $@
	ar rcs $@ $(OBJS)

EXT := pyaccel/_driver$(shell $(PYTHON) -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")

ext: $(EXT)

$(EXT): $(SRCS) $(HDRS) pyaccel/_driver.pyx pyaccel/_driver.pxd setup.py | $(DEPS_STAMP)
	$(PYTHON) setup.py -q build_clib --force build_ext --inplace --force

# C tests link the static library; exit 77 means skipped.
$(BUILD)/tests/%: tests/c/%.c tests/c/harness.h $(ALIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_PA) -Itests/c $< -o $@ $(ALIB) $(LDLIBS_PA)

test-c: $(CTESTS)
	@tests/c/run.sh $(CTESTS)

test-py: deps all
	$(PYTHON) -m pytest $(PYTEST_ARGS)

test: test-c test-py

$(BUILD)/san/obj/%.o: driver/src/%.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_PA) $(SAN) -O1 -c $< -o $@

$(BUILD)/san/tests/%: tests/c/%.c tests/c/harness.h $(SAN_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_PA) $(SAN) -O1 -Itests/c $< -o $@ $(SAN_OBJS) $(LDLIBS_PA)

sanitize: $(SAN_TESTS)
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	tests/c/run.sh $(SAN_TESTS)

bench: deps all
	$(PYTHON) -m bench $(BENCH_ARGS)

lint:
	$(PYTHON) -m ruff check pyaccel tests bench scripts || true
	$(PYTHON) -m mypy pyaccel || true

clean:
	rm -rf $(BUILD) build pyaccel/_driver.c pyaccel/*.so *.egg-info demo-data

-include mk/install.mk
