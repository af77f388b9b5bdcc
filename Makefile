# apikeys: PGXS build.  `make demo` and `make test` are the two commands a
# newcomer needs; both install what is missing first (see test/setup.sh).

EXTENSION  = apikeys
EXTVERSION = 0.2.0
MODULE_big = apikeys
OBJS       = src/apikeys.o src/token.o src/type.o src/verify.o src/cache.o src/create.o \
             src/audit.o src/chain.o src/insert.o src/lifecycle.o src/objects.o src/session.o src/guard.o \
             src/shmem.o src/limits.o src/usage.o src/worker.o \
             src/note.o src/leak.o src/request.o src/reveal.o src/import.o src/pepper.o src/request_log.o
DATA       = apikeys--0.1.0.sql apikeys--0.1.0--0.2.0.sql
PGFILEDESC = "apikeys - API keys inside PostgreSQL"

# pg_regress suites, by topic (sql/NAME.sql, expected/NAME.out)
REGRESS = setup type_io create_verify rotate lifecycle privileges audit login postgrest \
          restrictions bad_input renewal limits hardening leak requests reveal import \
          plpgsql_check limits_usage audit_chain create_fast cache pepper request_log \
          key_session four_eyes key_count matching_edges cache_time
# isolation specs (test/specs/NAME.spec, test/expected/NAME.out)
ISOLATION = revoke_verify rotate_verify catalog_recreate hostile_locks login_revoke rate_limit_verify \
            leak_race request_claim audit_chain_writers cache_invalidation chain_revoke_stall

PG_CONFIG ?= pg_config
PG_CPPFLAGS += -I$(srcdir)/src
PG_CFLAGS  += -Wall -Wextra -Werror -Wno-unused-parameter  # PG headers have unused parameters

# apikeys-scan: the leak scanner, a standalone program (no server headers)
# installed beside pg_config; see src/scan/apikeys-scan.c.
SCANNER     = src/scan/apikeys-scan
EXTRA_CLEAN = $(SCANNER)

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# SHA-256 straight from OpenSSL when the server uses it (src/token.c)
ifeq ($(with_ssl),openssl)
SHLIB_LINK += -lcrypto
endif

# PGXS tracks no header dependencies: rebuild everything when one changes
# (shared-memory structs must agree across files).
$(OBJS): src/apikeys.h src/compat.h src/shmem.h

all: $(SCANNER)

$(SCANNER): src/scan/apikeys-scan.c
	$(CC) $(CFLAGS) -O2 $(LDFLAGS) -o $@ $<

.PHONY: install-scan uninstall-scan
install: install-scan
install-scan: $(SCANNER)
	$(MKDIR_P) '$(DESTDIR)$(bindir)'
	$(INSTALL_PROGRAM) $(SCANNER) '$(DESTDIR)$(bindir)/apikeys-scan'

uninstall: uninstall-scan
uninstall-scan:
	rm -f '$(DESTDIR)$(bindir)/apikeys-scan'

.PHONY: test demo test-all
test:
	bash test/run.sh

# `make test` on every supported major, 15, 18 and 17, one after the other
# (test/majors.sh: 18 is built from source and 17 bootstrapped in a Debian
# trixie chroot once, cached in /var/cache/apikeys-test).
test-all:
	bash test/majors.sh all

demo:
	bash test/demo.sh

# Used by test/run.sh to read the suite lists from one place.
.PHONY: print-regress print-isolation
print-regress:
	@echo $(REGRESS)
print-isolation:
	@echo $(ISOLATION)

.PHONY: bench bench-http
bench:
	bash test/bench.sh
	bash test/bench_http.sh
# only the requests per second through PostgREST (test/bench_http.sh)
bench-http:
	bash test/bench_http.sh

.PHONY: bench-scan
bench-scan:
	bash test/bench_scan.sh

# Long-running checks, not part of `make test` (see README, Contributing).
.PHONY: test-valgrind test-ubsan test-asan fuzz mutation
test-valgrind:
	bash test/valgrind.sh
test-ubsan:
	bash test/ubsan.sh
test-asan:
	bash test/asan.sh
fuzz:
	bash test/fuzz/run.sh $${FUZZ_SECONDS:-600}
mutation:
	bash test/mutation.sh $(MUTANTS)

.PHONY: bench-import
bench-import:
	bash test/bench_import.sh
