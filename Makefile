# Ferry — see README.md. `make test` is the command CI runs.
GO       ?= go
GOBIN    := $(shell $(GO) env GOPATH)/bin
LINT_VERSION := v2.15.0
LINT     := $(GOBIN)/golangci-lint
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X github.com/ferrymq/ferry/gateway.Version=$(VERSION)
FUZZTIME ?= 10s

.PHONY: all build test test-short lint bench fuzz-smoke dist run clean tools

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ferry ./cmd/ferry

## test: vet + race tests (the README's test command; CI runs it)
test:
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 9m ./...

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

## fuzz-smoke: run every fuzzer for FUZZTIME each
fuzz-smoke:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "fuzz $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; done

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
