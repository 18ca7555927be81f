# Ferry — see README.md. `make test` is the command CI runs.
GO       ?= go
GOBIN    := $(shell $(GO) env GOPATH)/bin
LINT_VERSION := v2.15.0
LINT     := $(GOBIN)/golangci-lint
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse HEAD 2>/dev/null)
# SOURCE_DATE_EPOCH (reproducible builds) wins over the clock.
BUILD_DATE ?= $(shell date -u $${SOURCE_DATE_EPOCH:+-d @$$SOURCE_DATE_EPOCH} +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS  := -s -w -X github.com/ferrymq/ferry/gateway.Version=$(VERSION) -X main.commit=$(COMMIT) -X main.buildDate=$(BUILD_DATE)
FUZZTIME ?= 10s

.PHONY: all build test test-short test-arm chaos powercut lint bench bench-compare fuzz-smoke dist run clean tools

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ferry ./cmd/ferry

## test: vet + race tests (the README's test command; CI runs it)
test:
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 9m ./...

## test-arm: spool, message, STOMP and bridge tests for arm/v7, arm/v6, arm64 under qemu-user; dist binaries static
test-arm:
	./.ci/test-arm

## chaos: the gateway-level proof campaign, full form (docs/chaos.md): SIGKILLs, link faults, disk full, damaged
##   spool files against the real binary; prints the report (FERRY_CHAOS_SEED=N repeats a schedule)
chaos:
	@mkdir -p bin
	@rm -f bin/chaos-report.txt
	@echo "make chaos: the $${FERRY_CHAOS:-full} campaign (full: at most 15 minutes); log in bin/chaos.log"
	@PATH="$$PATH:/usr/sbin" FERRY_CHAOS=$${FERRY_CHAOS:-full} FERRY_CHAOS_REPORT=$(CURDIR)/bin/chaos-report.txt \
	  $(GO) test -count=1 -timeout 20m -run '^TestChaos$$' ./cmd/ferry/chaos/ > bin/chaos.log 2>&1; \
	  status=$$?; cat bin/chaos-report.txt 2>/dev/null || tail -50 bin/chaos.log; \
	  if [ $$status -ne 0 ]; then echo "make chaos: FAILED (exit $$status); details in bin/chaos.log"; fi; exit $$status

## test-short: unit tests only, no real processes
test-short:
	$(GO) test -short -count=1 ./...

$(LINT):
	GOFLAGS=-buildvcs=false $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(LINT_VERSION)

## lint: golangci-lint (pinned, installed into GOPATH/bin when missing)
lint: $(LINT)
	$(LINT) run ./...

## bench: component and end-to-end benchmarks, printed as a table (BENCH_FULL=1: also the 1M-message ones)
bench:
	./.ci/bench

## bench-compare: Ferry vs Mosquitto (bridge mode, persistence), end to end, same run; table in bin/bench-compare/
##   (BENCH_QUICK=1: seconds; BENCH_FULL=1: also the 1M backlog; BENCH_RUNS=N; see docs/benchmarks.md)
bench-compare:
	PATH="$$PATH:/usr/sbin" $(GO) run ./cmd/bench-compare -out bin/bench-compare

## fuzz-smoke: run every fuzzer for FUZZTIME each
fuzz-smoke:
	GO=$(GO) FUZZTIME=$(FUZZTIME) ./.ci/fuzz-smoke

## powercut: the spool's power-cut test, long form (800 crash images per durability mode; make test runs 64)
powercut:
	FERRY_POWERCUT=long $(GO) test -count=1 -timeout 30m -run 'TestPowerCut$$' -v ./spool/

## dist: static binaries for the edge targets
dist:
	@mkdir -p dist
	@set -e; for t in linux/amd64 linux/arm64 linux/arm/7 linux/arm/6; do \
	  os=$${t%%/*}; rest=$${t#*/}; arch=$${rest%%/*}; arm=$${rest#*/}; \
	  out=dist/ferry-$$os-$$arch; env=""; \
	  if [ "$$arch" = arm ]; then out=$$out"v$$arm"; env="GOARM=$$arm"; fi; \
	  env CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $$env $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $$out ./cmd/ferry; \
	done; ls -l dist | awk 'NR>1 {printf "%-28s %6.1f MiB\n", $$9, $$5/1048576}'

## run: the gateway on the embedded default config (configs/dev.yaml)
run: build
	./bin/ferry run -c configs/dev.yaml

clean:
	rm -rf bin dist data bench.out
