# The two commands a new user needs: `make dev` (a GPU shell on this machine)
# and `make test` (the whole test suite, as CI runs it).

# go-nvml's header marks some calls deprecated; its warnings are noise here.
export CGO_CFLAGS ?= -O2 -g -Wno-deprecated-declarations

.PHONY: dev test build agent-image images bench clean web-deps

# The version `devgpu --version`, doctor, the server's log and /healthz
# report: the tag or commit this tree is at, "-dirty" with local changes.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS := -X github.com/devgpu/devgpu/internal/version.Version=$(VERSION)

# bin/devgpu-agent is the same program linked statically, for the oci
# runtime to run inside images that have no libc. The agentonly tag leaves
# out what only the server and the client need (client-go among them).
build:
	go build -ldflags "$(LDFLAGS)" -o bin/devgpu ./cmd/devgpu
	CGO_ENABLED=0 go build -tags agentonly -ldflags "$(LDFLAGS)" -o bin/devgpu-agent ./cmd/devgpu

# The image the kube runtime's init container copies the agent from, as a
# `docker save` tarball (import it with `test/k8s/cluster.sh import` or
# `docker load`, or push it); prints its digest.
AGENT_IMAGE ?= devgpu.local/agent:dev
agent-image: build
	go run ./scripts/agentimage -agent bin/devgpu-agent -ref $(AGENT_IMAGE) -out bin/agent-image.tar

# The server and agent images (deploy/helm/devgpu runs them), built without
# Docker from scratch, as `docker save` tarballs under bin/, and
# bin/RELEASE.md with each image's name, tag and digest. The server image's
# devgpu is static (CGO_ENABLED=0): the kube runtime and PostgreSQL need no
# cgo, and NVML only serves a GPU host's own runtimes. Both binaries are
# stripped (-s -w), which halves the images. IMAGE_REPO/server and
# IMAGE_REPO/agent, both tagged IMAGE_TAG.
IMAGE_REPO ?= devgpu.local
IMAGE_TAG ?= dev
images:
	CGO_ENABLED=0 go build -ldflags "-s -w $(LDFLAGS)" -o bin/devgpu-server ./cmd/devgpu
	CGO_ENABLED=0 go build -tags agentonly -ldflags "-s -w $(LDFLAGS)" -o bin/devgpu-agent-image ./cmd/devgpu
	go run ./scripts/images -server bin/devgpu-server -agent bin/devgpu-agent-image -repo $(IMAGE_REPO) -tag $(IMAGE_TAG) -out bin

dev:
	go build -ldflags "$(LDFLAGS)" -o bin/devgpu ./cmd/devgpu
	./scripts/dev.sh

# The web console's browser tests (e2e/console_test.go) drive Chromium with
# playwright-core and check pages with axe-core, from web/node_modules:
# installed when missing or older than web/package-lock.json, else nothing
# to do. Without npm the tests skip (CI fails them instead). `go build`
# needs none of this: the built console is committed in internal/web/dist.
web-deps: web/node_modules/.package-lock.json
web/node_modules/.package-lock.json: web/package-lock.json
	@if command -v npm >/dev/null; then \
		cd web && npm ci --no-audit --no-fund && touch node_modules/.package-lock.json; \
	else \
		echo "npm is not installed: the web console's browser tests will skip (install Node.js 20 or newer with npm to run them)" >&2; \
	fi

test: web-deps
	go vet ./...
	# The client also runs on developers' Windows and macOS machines.
	GOOS=windows GOARCH=amd64 go build -o /dev/null ./cmd/devgpu
	GOOS=darwin GOARCH=arm64 go build -o /dev/null ./cmd/devgpu
	# client-go stays out of the static agent and of the Windows and macOS clients.
	! CGO_ENABLED=0 go list -tags agentonly -deps ./cmd/devgpu | grep '^k8s.io/client-go'
	! GOOS=windows GOARCH=amd64 go list -deps ./cmd/devgpu | grep '^k8s.io/client-go'
	! GOOS=darwin GOARCH=arm64 go list -deps ./cmd/devgpu | grep '^k8s.io/client-go'
	# So does the Azure SDK (the aca runtime's).
	! CGO_ENABLED=0 go list -tags agentonly -deps ./cmd/devgpu | grep '^github.com/Azure/azure-sdk-for-go'
	! GOOS=windows GOARCH=amd64 go list -deps ./cmd/devgpu | grep '^github.com/Azure/azure-sdk-for-go'
	! GOOS=darwin GOARCH=arm64 go list -deps ./cmd/devgpu | grep '^github.com/Azure/azure-sdk-for-go'
	go test -race -count=1 -timeout 15m ./...

# web-deps: the console section times the browser terminal with playwright-core.
bench: build web-deps
	./bench/compare.sh

clean:
	rm -rf bin
